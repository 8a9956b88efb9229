"""Every stage's training step makes its tensors on the model's device, which a GPU run needs and a
CPU run cannot show (on a CPU, the default device and the model's are the same).

Here the model and its batch stay on the CPU while the step runs with `meta` as the default
device: a tensor created in forward or backward without a device then lands on `meta`, meets the
model's CPU tensors and raises, as a CPU tensor meeting CUDA ones raises on a GPU. One step runs
first as it is: it fills the caches that are computed on the CPU by design and then moved to the
model's device (the views' sampling plans, the overlap's token pairs)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

UNCACHED = [f"stage.{s}.cache_vision_features=false" for s in ("vision", "resampler", "finetune")]


def step_with_meta_as_the_default_device(objective: nn.Module, batch: dict) -> None:
    with torch.no_grad():
        objective(**batch)
    with torch.device("meta"):
        objective(**batch)["loss"].backward()


def test_the_check_catches_a_tensor_made_on_the_default_device():
    class Positions(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(width))

        def forward(self, x: torch.Tensor) -> dict:
            positions = torch.arange(x.shape[-1])  # on the default device, whatever x's
            return {"loss": (x * self.scale + positions).sum()}

    with pytest.raises(RuntimeError, match="is not on the expected device"):
        step_with_meta_as_the_default_device(Positions(4), {"x": torch.ones(2, 4)})

    class Placed(Positions):
        def forward(self, x: torch.Tensor) -> dict:
            return {"loss": (x * self.scale + torch.arange(x.shape[-1], device=x.device)).sum()}

    step_with_meta_as_the_default_device(Placed(4), {"x": torch.ones(2, 4)})


@pytest.mark.parametrize(
    "overrides",
    [
        # every resampler, the views cut from the panorama at every step (no feature cache)
        ["resampler=mlp", *UNCACHED],
        ["resampler=bimamba", *UNCACHED],
        ["resampler=perceiver", *UNCACHED],
        ["resampler=qformer", *UNCACHED],
        # cached features; a global view, overlap dedupe and the last vision block trained
        ["view=anyres_e2p", "stitch=dedupe_overlap", "stage.finetune.vision_trainable_blocks=1"],
    ],
    ids=lambda o: " ".join(x for x in o if x not in UNCACHED),
)
def test_every_stage_step_makes_its_tensors_on_the_models_device(overrides, smoke_config):
    from vlm_resampler.training.run import prepare_model, resolved_container, stage_objective
    from vlm_resampler.training.stage_data import stage_dataset

    cfg = resolved_container(smoke_config(*overrides))
    assert cfg["stages"] == ["vision", "resampler", "finetune"]
    for name in cfg["stages"]:
        stage = OmegaConf.create(cfg["stage"][name])
        model = prepare_model(cfg, name, stage, None)[0]
        dataset, collator, code_target = stage_dataset(cfg, model, stage)
        objective = stage_objective(model, stage, code_target)[0]
        batch = collator([dataset[0]])  # one item: where tensors are made does not depend on the batch size
        if "labels" in batch:  # as the Trainer passes it: the step's answer tokens, on the model's device
            batch["num_items_in_batch"] = (batch["labels"][:, 1:] != -100).sum()
        step_with_meta_as_the_default_device(objective, batch)
