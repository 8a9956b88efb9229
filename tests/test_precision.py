"""How a run computes (training/precision.py): precision, gradient checkpointing and dataloader
workers are checked, applied through the Trainer and recorded in each checkpoint; a precision this
machine cannot run stops the run with one line saying why."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlm_resampler.errors import ConfigError
from vlm_resampler.runs import layout
from vlm_resampler.training import precision

from conftest import answer_logits, run_cli, training_batch


@pytest.mark.parametrize(
    "override, message",
    [
        ("precision=fp8", "precision='fp8': expected one of fp32, bf16, fp16"),
        ("gradient_checkpointing=1", "gradient_checkpointing=1: expected true or false"),
        ("dataloader_workers=-1", "dataloader_workers=-1: expected an integer >= 0"),
        ("attn_implementation=flash", "attn_implementation='flash': expected one of sdpa, eager"),
        (
            # a backbone option that does not pass the setting on
            "attn_implementation=eager backbone.language_model.attn_implementation=sdpa",
            "attn_implementation='eager', but model.language_model.attn_implementation='sdpa': the backbone "
            "option's language_model must pass the setting on (`attn_implementation: "
            "${oc.select:attn_implementation,sdpa}`, as conf/backbone/*.yaml do)",
        ),
    ],
)
def test_compute_settings_are_checked_naming_the_key(override, message, smoke_config):
    from vlm_resampler.config.validate import check_compute

    with pytest.raises(ConfigError) as err:
        check_compute(smoke_config(*override.split()))
    assert str(err.value) == message


@pytest.mark.cuda
def test_fp16_without_a_gpu_stops_the_run_with_one_line_saying_why(tmp_path):
    done = run_cli("train.py", "debug=smoke", "precision=fp16", "stages=[finetune]", "experiment.name=f", cwd=tmp_path)
    if torch.cuda.is_available():  # a GPU machine runs it
        assert done.returncode == 0, done.stderr[-3000:]
        return
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "precision=fp16: mixed fp16 needs a CUDA GPU" in done.stderr


@pytest.mark.cuda
def test_bf16_on_a_cpu_is_allowed_only_where_a_measured_step_is_fast(monkeypatch):
    ratio = precision.cpu_bf16_slowdown()  # the real measurement: a positive, finite ratio
    assert math.isfinite(ratio) and ratio > 0
    if torch.cuda.is_available():
        return
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 5.0)
    with pytest.raises(precision.PrecisionUnavailable, match=r"runs 5\.0x slower than float32"):
        precision.check_device("bf16")
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 0.8)
    precision.check_device("bf16")  # fast enough: allowed
    precision.check_device("fp32")


def test_gradient_checkpointing_changes_no_loss_and_every_setting_is_recorded(smoke_config, tmp_path):
    from vlm_resampler.training.run import resolved_container, run_stage

    losses = {}
    for checkpointing in (False, True):
        cfg = resolved_container(
            smoke_config("stages=[finetune]", f"gradient_checkpointing={str(checkpointing).lower()}")
        )
        result = run_stage(cfg, "finetune", tmp_path / str(checkpointing), None)
        # What transformers' is_activation_checkpointing reads (its older name, is_gradient_checkpointing,
        # warns in 5.25; 5.17, the lent GPU machine's, lacks the new name).
        for model in (result.model.llm, result.model.vision.model):
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == checkpointing
        log = (result.stage_dir / layout.TRAIN_LOG).read_text().splitlines()
        losses[checkpointing] = [json.loads(line)["loss"] for line in log if "loss" in json.loads(line)]
        meta = json.loads((result.stage_dir / layout.METADATA).read_text())
        assert meta["compute"] == {
            "precision": "fp32",
            "dataloader_workers": 0,
            "gradient_checkpointing": checkpointing,
            "attn_implementation": "sdpa",
        }
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-5), "recomputing activations changed the losses"


def test_eager_attention_reaches_both_backbones_changes_no_loss_and_is_rebuilt(smoke_config, tmp_path):
    """attn_implementation goes through the model tree to the tower's and the LLM's from_pretrained,
    is recorded, and the checkpoint rebuilds with it; sdpa and eager compute the same attention."""
    from vlm_resampler.runs.load import load_stage
    from vlm_resampler.training.run import resolved_container, run_stage

    losses = {}
    for attention in ("sdpa", "eager"):
        cfg = resolved_container(smoke_config("stages=[finetune]", f"attn_implementation={attention}"))
        result = run_stage(cfg, "finetune", tmp_path / attention, None)
        assert result.model.llm.config._attn_implementation == attention
        assert result.model.vision.model.config._attn_implementation == attention
        meta = json.loads((result.stage_dir / layout.METADATA).read_text())
        assert meta["compute"]["attn_implementation"] == attention
        assert meta["model"]["language_model"]["attn_implementation"] == attention
        rebuilt = load_stage(result.stage_dir).model
        assert rebuilt.llm.config._attn_implementation == attention
        assert rebuilt.vision.model.config._attn_implementation == attention
        log = (result.stage_dir / layout.TRAIN_LOG).read_text().splitlines()
        losses[attention] = [json.loads(line)["loss"] for line in log if "loss" in json.loads(line)]
    assert len(losses["eager"]) == 2
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-4), "the attention kernel changed the losses"


def test_a_bf16_run_saves_float32_weights_and_rebuilds_to_the_same_outputs(smoke_config, tmp_path, monkeypatch):
    """bf16 is autocast over float32 master weights: the checkpoint holds float32 tensors, says how
    it was trained, and load_from_run gives the outputs of the model that was saved, exactly."""
    from safetensors import safe_open

    from vlm_resampler import load_from_run
    from vlm_resampler.training.run import resolved_container, run_stage

    # Whether this CPU may train in bf16 is the measurement tested above; here it may.
    monkeypatch.setattr(precision, "cpu_bf16_slowdown", lambda: 0.8)
    cfg = resolved_container(smoke_config("stages=[finetune]", "precision=bf16"))
    result = run_stage(cfg, "finetune", tmp_path, None)
    meta = json.loads((result.stage_dir / layout.METADATA).read_text())
    assert meta["compute"]["precision"] == "bf16"
    with safe_open(str(result.stage_dir / layout.WEIGHTS), "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"F32"}
    fp32 = run_stage(resolved_container(smoke_config("stages=[finetune]")), "finetune", tmp_path / "fp32", None)
    losses = {}
    for name, stage_dir in (("bf16", result.stage_dir), ("fp32", fp32.stage_dir)):
        log = [json.loads(line) for line in (stage_dir / layout.TRAIN_LOG).read_text().splitlines()]
        losses[name] = [r["loss"] for r in log if "loss" in r]
    # Autocast took effect (bf16's rounding moves the first loss) and trained the same model.
    assert losses["bf16"][0] != losses["fp32"][0] and losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.05)
    assert all(math.isfinite(loss) for loss in losses["bf16"])

    batch = training_batch(cfg)
    expected = answer_logits(result.model, batch)
    assert expected.dtype == torch.float32 and torch.equal(
        expected, answer_logits(load_from_run(result.stage_dir), batch)
    )
