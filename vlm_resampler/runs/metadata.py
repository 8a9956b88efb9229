"""checkpoint_metadata.json: everything needed to rebuild a stage's model exactly."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path

from vlm_resampler.errors import UserFacingError
from vlm_resampler.runs import layout

FORMAT_VERSION = 1


def software_versions() -> dict[str, str]:
    import hydra
    import peft
    import safetensors
    import torch
    import transformers

    from vlm_resampler.version import __version__

    return {
        "python": platform.python_version(),
        "vlm_resampler": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "hydra": hydra.__version__,
    }


def describe_model(model) -> dict:
    """Numbers derived from the built model; recorded so a reader need not rebuild it."""
    gh, gw = model.view_grid
    return {
        "resampler_type": model.resampler.type_name,
        "vision_hidden_size": model.vision.hidden_size,
        "latent_dimension": model.resampler.latent_dimension,
        "llm_hidden_size": model.llm.get_input_embeddings().embedding_dim,
        "view_grid": [gh, gw],
        "num_views": model.num_views,
        "tokens_per_view": model.tokens_per_view,
        "tokens_per_image": model.tokens_per_image,
        "views": [vars(m) | {"size": list(m.size)} for m in model.views.metadata()],
    }


def resampler_record(resampler_node: dict, input_dim: int) -> dict:
    """The metadata's `resampler` entry: every parameter of the config node, plus the input width
    it was built with (which the node leaves to the vision tower)."""
    return {k: v for k, v in resampler_node.items() if k != "_partial_"} | {"input_dim": input_dim}


def build_metadata(
    *,
    stage: str,
    seed: int,
    model_tree: dict,
    model,
    tokenizer: dict,
    prompt: dict,
    data: dict,
    backbones: dict,
    saved_modules: list[str],
    weight_files: dict[str, str],
    init_from: str | None,
    trainable: list[tuple[str, int]],
    train_summary: dict,
    compute: dict | None = None,
) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "seed": seed,  # fresh weights (and the untrained baseline) are drawn with it
        "resampler_type": model.resampler.type_name,
        "resampler": resampler_record(model_tree["resampler"], model.resampler.input_dim),
        "model": model_tree,
        "derived": describe_model(model),
        "backbones": backbones,
        "tokenizer": tokenizer,
        "prompt": prompt,
        "data": data,
        "init_from": init_from,
        "saved_modules": saved_modules,
        "weights_sha256": weight_files,
        "trainable": {name: count for name, count in trainable},
        "train": train_summary,
        # precision (mixed: the weights above are float32 all the same), gradient checkpointing, workers
        "compute": compute,
        "software": software_versions(),
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "argv": sys.argv,
    }


class MetadataError(UserFacingError, ValueError):
    """A checkpoint_metadata.json this code cannot read (damaged, or in another format): a short
    message for every command that meets it."""


def read_metadata(stage_dir: Path) -> dict:
    path = Path(stage_dir) / layout.METADATA
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MetadataError(f"{path} is not valid JSON ({err}); the checkpoint is damaged") from err
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        from vlm_resampler.runs.guide_metadata import is_guide_format

        if is_guide_format(meta):
            # CheckpointRecord.read rebuilds such a checkpoint (from its weights, the file's values
            # checked against them) for eval and inspect; training continues only from our format.
            raise MetadataError(
                f"{path} is in the earlier system's (guide) format: `python launch/eval.py checkpoint_dir={Path(stage_dir)}` "
                "rebuilds it from its weights; init_from reads only the format this code writes"
            )
        raise MetadataError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    return meta
