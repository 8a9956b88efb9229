"""A checkpoint whose checkpoint_metadata.json is in the earlier system's ("guide") format evaluates.

Each test takes a smoke finetune run of ours, replaces its metadata with a guide-format file
written by hand (as the old system wrote them, dicts below) and drops the run's
resolved_config.yaml, so the guide file, the weight shapes and the command line are all there is.
Precedence: the file, then the weight shapes, then the command line; every value the file states
that shapes a tensor must build exactly the weights.
"""

from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
import torch

from vlm_resampler.resamplers.shape_rules import ShapeInferenceError
from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch
from vlm_resampler.runs.guide_metadata import GuideMetadataError

from conftest import FINETUNE_RUN_TYPES, run_cli

# The runs of conftest.finetune_runs (shared with tests/test_shape_inference.py).
TYPES = FINETUNE_RUN_TYPES

# What the earlier system's MetadataCallback wrote for those runs (full resampler_config form).
# Its views: e2p, 120 degrees, overlap 0.25 (our conf/view/e2p.yaml defaults, which the runs used).
MLP_GUIDE = {
    "experiment_name": "mlp",
    "stage": "finetune",
    "stage_canonical": "finetune",
    "model_config": {
        "vision_name": "vlm-resampler/tiny-siglip",
        "language_model_name": "vlm-resampler/tiny-qwen3",
        "resampler_type": "mlp",
        "latent_dimension": 768,
        "image_size": 112,
        "max_text_length": 64,
        "vicreg_loss_weight": 1.0,
        "overlap_ratio": 0.5,
        "resampler_config": {
            "latent_dimension": 768,
            "hidden_dim": 96,
            "depth": 2,
            "use_ln": True,
            "dropout": 0.05,
            "num_views": 8,
        },
        "resampler_hidden_dim": 96,
    },
    "training_config": {
        "learning_rate": 0.002,
        "batch_size": 4,
        "accumulate_grad_batches": 1,
        "epochs": 1,
        "crop_strategy": "e2p",
        "fov_deg": 120.0,
        "overlap_ratio": 0.25,
        "use_vision_processor": True,
        "normalize": True,
        "use_lora": True,
        "lora_rank": 16,
        "lora_alpha": 32,
        "vision_trainable_blocks": 0,
    },
    "dataset": {
        "train_csv": "data/quic360/train.csv",
        "val_csv": "data/quic360/valid.csv",
        "dataset_name": "quic360",
        "num_train_samples": 12,
        "num_val_samples": 4,
        "num_workers": 0,
    },
    "system": {"num_gpus": 1, "mixed_precision": "bf16-mixed"},
    "wandb": None,
    "config": {"source_path": "configs/smoke.yaml", "saved_filename": "config.yaml"},
    "epoch_info": {"current_epoch": 0, "global_step": 2, "val_loss": 9.87},
    "checkpoint_info": {
        "created_at": "2025-10-27T09:14:03",
        "pytorch_lightning_version": "2.4.0",
        "torch_version": "2.4.1",
    },
}
QFORMER_GUIDE = copy.deepcopy(MLP_GUIDE) | {"experiment_name": "qformer"}
QFORMER_GUIDE["model_config"] |= {
    "resampler_type": "qformer",
    "resampler_hidden_dim": 64,
    "resampler_config": {
        "latent_dimension": 768,
        "num_query_tokens": 8,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "hidden_dim": 64,
        "intermediate_size": 128,
        "cross_attention_frequency": 2,
        "dropout": 0.0,
    },
}
GUIDES = {"mlp": MLP_GUIDE, "qformer": QFORMER_GUIDE}


def guide_with(kind: str, model: dict | None = None, training: dict | None = None) -> dict:
    guide = copy.deepcopy(GUIDES[kind])
    guide["model_config"] |= model or {}
    guide["training_config"] |= training or {}
    return guide


def with_guide(run_dir, tmp_path, guide: dict | str):
    """A copy of the run whose finetune metadata is `guide` (a dict, or the raw text of a file), without resolved_config.yaml."""
    copy_dir = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy_dir)
    (copy_dir / layout.RESOLVED_CONFIG).unlink()
    text = guide if isinstance(guide, str) else json.dumps(guide, indent=2)
    (copy_dir / "finetune" / layout.METADATA).write_text(text)
    return copy_dir / "finetune"


@pytest.fixture(scope="module")
def stitch_concat():
    from omegaconf import OmegaConf

    from vlm_resampler.config.preflight import compose

    return OmegaConf.to_container(compose("train", ["stitch=concat"]).stitch, resolve=True)


def same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_eval(stage_dir, *overrides):
    """launch/eval.py's checks before anything is loaded (in process: no model, no subprocess)."""
    from vlm_resampler.config.preflight import compose
    from vlm_resampler.evaluation.cli import check_eval_config

    check_eval_config(compose("eval", [f"checkpoint_dir={stage_dir}", *overrides]))


@pytest.mark.parametrize("kind", list(TYPES))
def test_eval_of_a_guide_format_checkpoint_says_so_and_is_the_saved_model(finetune_runs, tmp_path, stitch_concat, kind):
    from vlm_resampler.errors import ConfigError
    from vlm_resampler.runs.load import load_stage
    from vlm_resampler.runs.provenance import RECONSTRUCTED, UserSettings

    stage_dir = with_guide(finetune_runs[kind], tmp_path, GUIDES[kind])
    # The file names the backbone and the views; only the stitching and the dataset are asked for.
    with pytest.raises(ConfigError, match="guide\\) format.*choose stitch=<option> data=<option>") as refused:
        check_eval(stage_dir)
    assert "backbone=" not in str(refused.value) and "view=" not in str(refused.value)

    done = run_cli(
        "eval.py",
        f"checkpoint_dir={stage_dir}",
        "debug=smoke",
        "stitch=concat",
        "data=synthpano",
        "data.num_train=12",
        "data.num_val=4",
        "data.num_test=4",
        "baselines=false",
        "meteor=false",
        "max_new_tokens=4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "is in the earlier system's (guide) format: the model was rebuilt from it, then weight shapes" in log
    assert (
        f"taken from checkpoint_metadata.json (guide format): resampler type={kind}, resampler.latent_dimension=768"
        in log
    )
    assert (
        "backbone=tiny (vision_name='vlm-resampler/tiny-siglip'" in log
        and "view=e2p(fov_deg=120.0, overlap=0.25)" in log
    )
    assert "lora.r=16, lora.alpha=32" in log
    assert f"inferred from weight shapes: resampler type={kind}" in log and "lora.target_modules=" in log
    assert "not verified: the guide-format checkpoint_metadata.json records no sha256 sums" in log
    if kind == "qformer":  # no shape tells the head count: the guide file does
        assert "resampler.num_attention_heads=4" in log
    metrics = json.loads((stage_dir / "eval" / "synthpano-test" / "metrics.json").read_text())
    assert (
        metrics["rebuilt_without_metadata"]["guide_values"]["resampler.hidden_dim"]
        == GUIDES[kind]["model_config"]["resampler_hidden_dim"]
    )

    original, rebuilt = (
        load_stage(finetune_runs[kind] / "finetune"),
        load_stage(stage_dir, user=UserSettings(groups={"stitch": stitch_concat})),
    )
    assert same_model(original.model, rebuilt.model)
    saved, found = original.metadata["model"], rebuilt.metadata["model"]
    assert found["resampler"] == saved["resampler"] and found["views"] == saved["views"]
    assert (found["lora"]["r"], found["lora"]["alpha"], sorted(found["lora"]["target_modules"])) == (
        saved["lora"]["r"],
        saved["lora"]["alpha"],
        sorted(saved["lora"]["target_modules"]),
    )
    assert RECONSTRUCTED in rebuilt.metadata


def test_the_simple_fields_form_is_completed_from_the_weights(finetune_runs, tmp_path, stitch_concat):
    """The guide's other form: resampler_type, latent_dimension and resampler_hidden_dim only."""
    from omegaconf import OmegaConf

    from vlm_resampler.config.preflight import compose
    from vlm_resampler.runs.load import load_stage
    from vlm_resampler.runs.provenance import RECONSTRUCTED, UserSettings, describe

    guide = guide_with("mlp", model={"resampler_config": None})
    stage_dir = with_guide(finetune_runs["mlp"], tmp_path, guide)
    # A backbone and views on the command line that contradict the file are reported and ignored.
    other = compose("train", ["backbone=smollm2", "view=cubemap"])
    groups = {
        "stitch": stitch_concat,
        "backbone": OmegaConf.to_container(other.backbone, resolve=True),
        "view": OmegaConf.to_container(other.view, resolve=True),
    }
    loaded = load_stage(stage_dir, user=UserSettings(groups=groups))
    original = load_stage(finetune_runs["mlp"] / "finetune")
    assert same_model(original.model, loaded.model)
    assert loaded.metadata["model"]["views"] == original.metadata["model"]["views"]
    assert loaded.metadata["model"]["language_model"]["name_or_path"] == "vlm-resampler/tiny-qwen3"
    rec = loaded.metadata[RECONSTRUCTED]
    assert {k: rec["guide_values"][k] for k in ("resampler.hidden_dim", "resampler.latent_dimension")} == {
        "resampler.hidden_dim": 96,
        "resampler.latent_dimension": 768,
    }
    assert {k: rec["inferred"][k] for k in ("resampler.depth", "resampler.use_ln")} == {
        "resampler.depth": 2,
        "resampler.use_ln": True,
    }
    assert "resampler.dropout" in rec["assumed"]
    lines = "\n".join(describe(loaded.metadata))
    assert "taken from checkpoint_metadata.json (guide format): resampler type=mlp" in lines
    assert (
        "ignored the backbone of the eval command line (vlm-resampler/tiny-siglip + vlm-resampler/smollm2-135m-instruct)"
        in lines
    )
    assert "ignored the view of the eval command line (CubemapViews(" in lines
    assert "inferred from weight shapes: resampler type=mlp" in lines and "resampler.depth=2" in lines


@pytest.mark.parametrize(
    "model, training, error, message",
    [
        (
            {
                "resampler_config": MLP_GUIDE["model_config"]["resampler_config"] | {"hidden_dim": 128},
                "resampler_hidden_dim": None,
            },
            {},
            CheckpointMismatch,
            r"resampler.layers.0.weight: checkpoint_metadata.json \(guide format\) builds shape \[128, 64\], the weights have \[96, 64\]",
        ),
        ({}, {"lora_rank": 8}, CheckpointMismatch, r"has LoRA rank r=16, but .* says training_config.lora_rank=8"),
        (
            {"resampler_type": "bimamba"},
            {},
            CheckpointMismatch,
            r"model_config.resampler_type='bimamba', but the weights are a mlp resampler",
        ),
        (
            {"resampler_config": {"input_dim": 1152, "hidden_dim": 96}},
            {},
            CheckpointMismatch,
            r"resampler_config.input_dim=1152, but the resampler weights take 64-wide inputs",
        ),
        (
            {"resampler_config": {"hiden_dim": 96}},
            {},
            GuideMetadataError,
            r"model_config.resampler_config.hiden_dim: .*Did you mean .*hidden_dim.*Valid names: latent_dimension, hidden_dim, depth",
        ),
        (
            {"resampler_config": {"hidden_dim": 128}},
            {},
            GuideMetadataError,
            r"resampler_config.hidden_dim=128 but model_config.resampler_hidden_dim=96: the file contradicts itself",
        ),
    ],
    ids=["hidden_dim", "lora_rank", "type", "input_dim", "unknown_key", "self_contradiction"],
)
def test_a_guide_file_that_disagrees_with_the_weights_is_refused(
    finetune_runs, tmp_path, stitch_concat, model, training, error, message
):
    from vlm_resampler import load_from_run
    from vlm_resampler.runs.provenance import UserSettings

    stage_dir = with_guide(finetune_runs["mlp"], tmp_path, guide_with("mlp", model, training))
    with pytest.raises(error, match=message):
        load_from_run(stage_dir, user=UserSettings(groups={"stitch": stitch_concat}))


def test_a_truncated_guide_file_is_named_with_the_way_out(finetune_runs, tmp_path):
    """The earlier system's writer stopped at the resampler config object it could not serialise."""
    from vlm_resampler import load_from_run
    from vlm_resampler.errors import ConfigError

    text = json.dumps(MLP_GUIDE, indent=2)
    cut = text[: text.index('"resampler_config": ') + len('"resampler_config": ')]
    stage_dir = with_guide(finetune_runs["mlp"], tmp_path, cut)
    path = re.escape(str(stage_dir / layout.METADATA))
    expected = rf"{path} is a checkpoint_metadata.json in the earlier system's \(guide\) format that is not valid JSON and ends right after `\"resampler_config\": `.*move the file away \(mv {path} "
    with pytest.raises(GuideMetadataError, match=expected):
        load_from_run(stage_dir)
    with pytest.raises(ConfigError, match=expected):
        check_eval(stage_dir, "stitch=concat", "data=synthpano")


def test_backbone_names_without_an_option_ask_for_backbone(finetune_runs, tmp_path, smoke_config, stitch_concat):
    from omegaconf import OmegaConf

    from vlm_resampler import load_from_run
    from vlm_resampler.errors import ConfigError
    from vlm_resampler.runs.load import load_stage
    from vlm_resampler.runs.provenance import UserSettings, describe

    guide = guide_with(
        "mlp", model={"vision_name": "/data/models/siglip-tiny", "language_model_name": "/data/models/qwen3-tiny"}
    )
    stage_dir = with_guide(finetune_runs["mlp"], tmp_path, guide)
    names = r"vision_name='/data/models/siglip-tiny', language_model_name='/data/models/qwen3-tiny'"
    with pytest.raises(
        ConfigError,
        match=rf"{names}, and no conf/backbone option has these two .*tiny \(vlm-resampler/tiny-siglip \+ vlm-resampler/tiny-qwen3\).*choose backbone=<option>",
    ):
        check_eval(stage_dir, "stitch=concat", "data=synthpano")
    with pytest.raises(ShapeInferenceError, match=rf"{names}, and no conf/backbone option .*choose backbone=<option>"):
        load_from_run(stage_dir, user=UserSettings(groups={"stitch": stitch_concat}))
    # Chosen on the command line, the option stands in for the names the file gives.
    check_eval(stage_dir, "backbone=tiny", "stitch=concat", "data=synthpano")
    backbone = OmegaConf.to_container(smoke_config().backbone, resolve=True)
    loaded = load_stage(stage_dir, user=UserSettings(groups={"stitch": stitch_concat, "backbone": backbone}))
    assert same_model(load_from_run(finetune_runs["mlp"] / "finetune"), loaded.model)
    assert (
        "which no conf/backbone option has: the backbone of the eval command line (vlm-resampler/tiny-siglip + vlm-resampler/tiny-qwen3) is used"
        in "\n".join(describe(loaded.metadata))
    )


def test_init_from_and_inspect_name_the_guide_format_instead_of_a_version_number(tmp_path):
    from vlm_resampler.runs.metadata import read_metadata

    (tmp_path / layout.METADATA).write_text(
        json.dumps({"model_config": {"resampler_type": "mlp"}, "training_config": {}})
    )
    with pytest.raises(ValueError, match=r"earlier system's \(guide\) format: `python launch/eval.py checkpoint_dir="):
        read_metadata(tmp_path)
