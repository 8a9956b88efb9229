"""checkpoint_metadata.json as the earlier system wrote it (the user guide's format), read as the
record of a checkpoint of ours (model.safetensors, adapter/ for LoRA).

That system wrote, per stage (shared/notes/ORIGIN.md §3.3):

    model_config:    {vision_name, language_model_name, resampler_type, latent_dimension, image_size,
                      max_text_length, vicreg_loss_weight, overlap_ratio, resampler_config, resampler_hidden_dim}
    training_config: {learning_rate, batch_size, ..., crop_strategy, fov_deg, overlap_ratio,
                      use_lora, lora_rank, lora_alpha, vision_trainable_blocks}
    experiment_name, stage, dataset, system, epoch_info, checkpoint_info

and never a `format_version` (ours always has one). The guide offers two ways to state the
resampler: a full `model_config.resampler_config` block, or the simple fields
(`resampler_type`, `latent_dimension`, `resampler_hidden_dim`; every other value then unknown).

This module only reads what such a file states, in our names. vlm_resampler.runs.reconstruct
takes it as the first source, checks every statement that shapes a tensor against the weights,
and fills in the rest from the weight shapes, then the eval command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_resampler.catalog import conf_options
from vlm_resampler.errors import UserFacingError
from vlm_resampler.guide_names import RESAMPLER_TYPES
from vlm_resampler.runs import layout

GUIDE_FORMAT = f"{layout.METADATA} (guide format)"
# model_config.<simple field> -> resampler parameter (the guide's "simple, individual fields").
SIMPLE_FIELDS = {"latent_dimension": "latent_dimension", "resampler_hidden_dim": "hidden_dim"}
# Carried in the earlier system's resampler config but read by none of its resamplers (ORIGIN §2.2).
DEAD_RESAMPLER_KEYS = ("num_views", "enable_cross_view")
# model_config keys that do not change the rebuilt model (training-only, or the earlier system's text length).
UNUSED_MODEL_KEYS = ("max_text_length", "vicreg_loss_weight")
# Which of the view option's keys each of the earlier system's crop strategies took from the file;
# its cubemap cut plain faces (no overlap, whatever overlap_ratio said): ours gets overlap 0.
VIEW_FIELDS = {
    "e2p": ("fov_deg", "overlap"),
    "sliding_window": ("fov_deg", "overlap"),
    "anyres_e2p": ("fov_deg", "overlap"),
    "cubemap": (),
    "resize": (),
}
FIXED_VIEW_VALUES = {"cubemap": {"overlap": 0.0}}


class GuideMetadataError(UserFacingError, ValueError):
    """A guide-format checkpoint_metadata.json that cannot be used as it is."""


@dataclass
class GuideMetadata:
    """What a guide-format file states, in our names (None / absent: not stated)."""

    path: Path
    resampler_type: str | None
    resampler: dict[str, Any]  # constructor argument -> value (input_dim apart)
    resampler_keys: dict[str, str]  # constructor argument -> the file's key, for messages
    input_dim: int | None
    lora: dict[str, Any]  # use, r, alpha: those the file states
    vision_name: str | None
    language_model_name: str | None
    image_size: int | None
    crop_strategy: str | None
    view: dict[str, Any]  # fov_deg, overlap: those the file states
    model_overlap: float | None  # model_config.overlap_ratio: the earlier model's stitching, not its views
    notes: list[str] = field(default_factory=list)


# ---- reading ------------------------------------------------------------------------------


def is_guide_format(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("model_config"), dict) and "format_version" not in data


def looks_like_guide(text: str) -> bool:
    """For a file that is not valid JSON: the guide format's section name, and not ours."""
    return '"model_config"' in text and '"format_version"' not in text


def read_guide_metadata(stage_dir: Path) -> GuideMetadata | None:
    """The stage's checkpoint_metadata.json if it is in the guide's format, else None (ours, or
    damaged beyond telling: read_metadata reports that)."""
    path = Path(stage_dir) / layout.METADATA
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if looks_like_guide(text):
            raise GuideMetadataError(truncated_message(path, text, err)) from err
        return None
    return parse_guide(data, path) if is_guide_format(data) else None


def truncated_message(path: Path, text: str, err: json.JSONDecodeError) -> str:
    at_resampler_config = text.rstrip().endswith('"resampler_config":')
    why = (
        ' and ends right after `"resampler_config": `: the earlier system\'s writer could not serialise its '
        "resampler config object and left every metadata file it wrote since then cut off there"
        if at_resampler_config
        else f" ({err.msg}, line {err.lineno} column {err.colno})"
    )
    return (
        f"{path} is a checkpoint_metadata.json in the earlier system's (guide) format that is not valid JSON{why}. "
        f"The resampler settings it was to record are not in it. To evaluate the checkpoint, move the file away "
        f"(mv {path} {path}.truncated): it is then rebuilt from its weights ({layout.WEIGHTS}), with the run's "
        f"{layout.RESOLVED_CONFIG} or the eval command line for what no weight shape says"
    )


def _section(data: dict, name: str, path: Path) -> dict:
    node = data.get(name)
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise GuideMetadataError(f"{path}: {name}={node!r}: expected an object of settings")
    return node


def parse_guide(data: dict, path: Path) -> GuideMetadata:
    model, training = _section(data, "model_config", path), _section(data, "training_config", path)
    resampler, keys, input_dim, notes = resampler_values(model, path)
    unused = [f"model_config.{k}" for k in UNUSED_MODEL_KEYS if model.get(k) is not None]
    if unused:
        notes.append(f"not used (no effect on the rebuilt model): {', '.join(unused)}")
    return GuideMetadata(
        path=path,
        resampler_type=resampler_type(model, path),
        resampler=resampler,
        resampler_keys=keys,
        input_dim=input_dim,
        lora=lora_values(training, path),
        vision_name=_name(model, "vision_name", path),
        language_model_name=_name(model, "language_model_name", path),
        image_size=_number(model, "model_config.image_size", "image_size", path, int),
        crop_strategy=_name(training, "crop_strategy", path, "training_config"),
        view=view_values(model, training, path),
        model_overlap=_number(model, "model_config.overlap_ratio", "overlap_ratio", path, float),
        notes=notes,
    )


def resampler_type(model: dict, path: Path) -> str | None:
    raw = model.get("resampler_type")
    if raw is None:
        return None
    if str(raw) not in RESAMPLER_TYPES:
        raise GuideMetadataError(
            f"{path}: model_config.resampler_type={raw!r}: not a resampler type here; expected one of {', '.join(RESAMPLER_TYPES)}"
        )
    return RESAMPLER_TYPES[str(raw)]


def resampler_values(model: dict, path: Path) -> tuple[dict, dict, int | None, list[str]]:
    """The resampler's values: the simple fields, overridden by a resampler_config block; the
    two forms may both be there, but must not contradict each other."""
    values, keys, notes = {}, {}, []
    for key, param in SIMPLE_FIELDS.items():
        if model.get(key) is not None:  # the earlier system wrote null for an unset field
            values[param], keys[param] = model[key], f"model_config.{key}"
    block = model.get("resampler_config")
    if block is not None and not isinstance(block, dict):
        raise GuideMetadataError(
            f"{path}: model_config.resampler_config={block!r}: expected an object of resampler settings"
        )
    for key, value in (block or {}).items():
        where = f"model_config.resampler_config.{key}"
        if key in DEAD_RESAMPLER_KEYS:
            notes.append(f"not used: {where}={value!r} (the earlier system carried it but no resampler read it)")
            continue
        if key in values and values[key] != value:
            raise GuideMetadataError(
                f"{path}: {where}={value!r} but {keys[key]}={values[key]!r}: the file contradicts itself; "
                "correct one of them, or move the file away so the checkpoint is rebuilt from its weights"
            )
        values[key], keys[key] = value, where
    input_dim = values.pop("input_dim", None)  # the vision encoder's width: checked against the weights
    keys.pop("input_dim", None)
    return values, keys, input_dim, notes


def check_resampler_keys(guide: GuideMetadata, valid: list[str], class_name: str) -> None:
    """Every resampler value the file states must be a constructor argument of its type."""
    from vlm_resampler.catalog import unknown_resampler_key

    for key in guide.resampler:
        if key not in valid:
            raise GuideMetadataError(
                f"{guide.path}: {guide.resampler_keys[key]}: "
                + unknown_resampler_key(key, valid, class_name)
                + f" Valid names: {', '.join(valid)}"
            )


def resampler_arguments(target: str) -> tuple[list[str], str]:
    """A resampler class's constructor arguments (the injected input_dim apart), and its name."""
    import inspect

    from hydra.utils import get_class

    cls = get_class(target)
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "input_dim")], cls.__name__


def lora_values(training: dict, path: Path) -> dict:
    found = {}
    if training.get("use_lora") is not None:
        if not isinstance(training["use_lora"], bool):
            raise GuideMetadataError(
                f"{path}: training_config.use_lora={training['use_lora']!r}: expected true or false"
            )
        found["use"] = training["use_lora"]
    for key, ours, kind in (("lora_rank", "r", int), ("lora_alpha", "alpha", float)):
        value = _number(training, f"training_config.{key}", key, path, kind)
        if value is not None:
            found[ours] = value
    return found


def view_values(model: dict, training: dict, path: Path) -> dict:
    """fov_deg and the view overlap. training_config.overlap_ratio cut the views; model_config's
    drove the earlier model's stitching (ORIGIN §3.2), so it stands in only when the other is absent."""
    found = {}
    fov = _number(training, "training_config.fov_deg", "fov_deg", path, float)
    if fov is not None:
        found["fov_deg"] = fov
    cut = _number(training, "training_config.overlap_ratio", "overlap_ratio", path, float)
    stitched = _number(model, "model_config.overlap_ratio", "overlap_ratio", path, float)
    if cut is not None or stitched is not None:
        found["overlap"] = cut if cut is not None else stitched
    return found


def _name(node: dict, key: str, path: Path, section: str = "model_config") -> str | None:
    value = node.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise GuideMetadataError(f"{path}: {section}.{key}={value!r}: expected a name")
    return value


def _number(node: dict, where: str, key: str, path: Path, kind: type) -> Any:
    value = node.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise GuideMetadataError(f"{path}: {where}={value!r}: expected {'an integer' if kind is int else 'a number'}")
    return value


# ---- our config options for what the file names --------------------------------------------


def backbone_option(guide: GuideMetadata) -> tuple[str, dict] | None:
    """The conf/backbone option with exactly the file's vision encoder and language model."""
    for name, option in conf_options("backbone").items():
        if (option["vision_encoder"]["name_or_path"], option["language_model"]["name_or_path"]) == (
            guide.vision_name,
            guide.language_model_name,
        ):
            return name, option
    return None


def backbone_choices() -> str:
    return "; ".join(
        f"{name} ({o['vision_encoder']['name_or_path']} + {o['language_model']['name_or_path']})"
        for name, o in conf_options("backbone").items()
    )


def view_option(guide: GuideMetadata) -> tuple[str, dict, dict] | None:
    """The conf/view option the file's crop_strategy names, with the file's fov_deg and overlap
    where the option has those keys; also the values set from the file (for the log)."""
    options = conf_options("view")
    if guide.crop_strategy not in options:
        return None
    option = dict(options[guide.crop_strategy])
    wanted = VIEW_FIELDS.get(guide.crop_strategy, ("fov_deg", "overlap"))
    taken = {k: v for k, v in guide.view.items() if k in wanted and k in option}
    taken |= {k: v for k, v in FIXED_VIEW_VALUES.get(guide.crop_strategy, {}).items() if k in option}
    return guide.crop_strategy, option | taken, taken


def view_notes(guide: GuideMetadata, name: str, taken: dict) -> list[str]:
    """What the log should say about view values that are not simply the file's."""
    notes = []
    if name in FIXED_VIEW_VALUES:
        notes.append(
            f"view={name}({', '.join(f'{k}={v}' for k, v in FIXED_VIEW_VALUES[name].items())}): the earlier system's "
            f"{name} faces shared nothing, whatever its overlap_ratio said"
        )
    elif "overlap" in taken and guide.model_overlap not in (None, taken["overlap"]):
        notes.append(
            f"view overlap {taken['overlap']} from training_config.overlap_ratio (it cut the views); "
            f"model_config.overlap_ratio={guide.model_overlap} only drove the earlier system's stitching"
        )
    return notes


def resolve_view(view: dict, backbone: dict) -> dict:
    """A view option's ${backbone.image_size} (and any other backbone reference), filled from the backbone used."""
    from omegaconf import OmegaConf

    both = OmegaConf.create({"backbone": backbone, "view": view})
    return OmegaConf.to_container(both, resolve=True)["view"]
