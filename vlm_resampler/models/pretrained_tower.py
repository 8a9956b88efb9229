"""`vlm-resampler/tiny-siglip-pretrained`: the tiny SigLIP tower pretrained, offline and from a
seed, to name what each SynthPano view faces (the horizon object's size, colour and shape, or
nothing).

Why: a real VLM's vision tower arrives knowing how to see; the random 64-wide tower projects each
16-pixel patch at random, and no connector read a small object's shape from it (README, "Where the
demo's direction score failed": perceiver direction 0.771, 47-50 of its 52-57 misses the shape
alone). Pretrained like this, the same connector recipe reads it.

The recipe below is the whole definition. Its scenes come from SynthPano's pretext stream under a
seed of their own (never a train/val/test scene, nor one the code-reading LLM was pretrained on),
rendered and cut into the default `e2p` views; a linear head per attribute reads the tower's own
pooled output (SigLIP's attention-pooling head) and is discarded. Built once into the backbone
cache like the other tiny backbones, with `pretraining.json` beside the weights: the recipe, the
data, the losses and the held-out accuracy per attribute.

A SigLIP-style sigmoid image-text loss on the same pairs (a text tower over the descriptions, or a
bag of word embeddings) was tried first and learned only "object or nothing" in the same budget
(held-out colour 0.17-0.19, shape 0.32, at 600-800 steps): see the README.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlm_resampler.cache import build_host
from vlm_resampler.data.object_facts import ATTRIBUTES, NOTHING, ROLES, view_facts
from vlm_resampler.data.synthpano.render import render_scene
from vlm_resampler.data.synthpano.scene import pretext_scene
from vlm_resampler.models.pinned_build import DEFAULT_FLOAT_PATH
from vlm_resampler.panorama.horizon import HorizonViews

PRETRAINING_FILE = "pretraining.json"
RECIPE = {
    "seed": 0,
    "scene_seed": 1,  # the pretext stream's seed: the code-reading LLM's scenes are seed 0's
    "scenes": 4000,
    "held_out_scenes": 300,  # the next scenes of that stream, for the numbers in pretraining.json
    "erp_size": [256, 512],  # conf/data/synthpano.yaml's erp_height, erp_width
    "views": {"fov_deg": 120.0, "overlap": 0.25, "size": 112},  # conf/view/e2p.yaml's four views
    "view_yaws_deg": [0.0, 90.0, 180.0, -90.0],
    "steps": 2000,
    "batch_size": 64,
    "lr": 3e-3,
    "warmup_steps": 50,
    "weight_decay": 0.01,
    "normalise": {"mean": 0.5, "std": 0.5},  # SigLIP's image_mean / image_std
    # Trained in a child process on this float path: the same bytes on every x86-64 CPU with AVX2.
    "float_path": dict(DEFAULT_FLOAT_PATH),
}


def _targets(scene, yaws) -> torch.Tensor:
    """[V, 3]: per view the faced object's (size, colour, shape) index + 1, 0 for nothing."""
    return view_facts(scene.objects, yaws)[:, ROLES.index("horizon")] - NOTHING


def render_views(recipe: dict, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views [count * V, 3, h, w] (normalised, float16 to halve the memory) and targets [count * V, 3]."""
    views = HorizonViews(**recipe["views"])
    mean, std = recipe["normalise"]["mean"], recipe["normalise"]["std"]
    pixels, targets = [], []
    for index in range(first, first + count):
        scene = pretext_scene(recipe["scene_seed"], index)
        erp = torch.from_numpy(render_scene(scene, tuple(recipe["erp_size"]))).permute(2, 0, 1).float().div_(255.0)
        pixels.append(((views.views(erp) - mean) / std).half())
        targets.append(_targets(scene, recipe["view_yaws_deg"]))
    return torch.cat(pixels), torch.cat(targets)


class AttributeHeads(torch.nn.Module):
    """One linear classifier per attribute (its values + "nothing") on the pooled tower output."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, len(values) + 1) for values in ATTRIBUTES.values())

    def forward(self, pooled: torch.Tensor) -> list[torch.Tensor]:
        return [head(pooled) for head in self.heads]


def _cosine_with_warmup(step: int, steps: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def pretrain_tower(tower, recipe: dict = RECIPE, progress: bool = True) -> tuple[AttributeHeads, dict]:
    """Train `tower` (a SiglipVisionModel, in place) and fresh heads; returns the heads and a report.
    Deterministic for a given recipe, torch build and thread count."""
    from tqdm import tqdm

    started = time.perf_counter()
    pixels, targets = render_views(recipe, 0, recipe["scenes"])
    render_seconds = time.perf_counter() - started
    generator = torch.Generator().manual_seed(recipe["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        heads = AttributeHeads(tower.config.hidden_size)
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps, warmup = int(recipe["steps"]), int(recipe["warmup_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_with_warmup(s, steps, warmup))
    tower.train()
    losses = []
    bar = tqdm(range(steps), desc="pretrain tiny-siglip-pretrained", unit="step", disable=not progress)
    for _ in bar:
        rows = torch.randint(len(pixels), (recipe["batch_size"],), generator=generator)
        logits = heads(tower(pixel_values=pixels[rows].float()).pooler_output)
        loss = sum(F.cross_entropy(head_logits, targets[rows, k]) for k, head_logits in enumerate(logits))
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix_str(f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    tower.eval()
    report = {
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(time.perf_counter() - started - render_seconds, 1),
        "views": len(pixels),
        "final_loss_last_50_steps": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "loss_every_100_steps": [
            round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 4) for i in range(0, len(losses), 100)
        ],
    }
    return heads, report


@torch.no_grad()
def held_out_accuracy(tower, heads: AttributeHeads, recipe: dict = RECIPE) -> dict:
    """On the held-out scenes: per attribute, accuracy over the views that face an object, and
    how often "nothing" is said exactly when a view faces nothing."""
    pixels, targets = render_views(recipe, recipe["scenes"], recipe["held_out_scenes"])
    tower.eval()
    predictions = []
    for start in range(0, len(pixels), 256):
        logits = heads(tower(pixel_values=pixels[start : start + 256].float()).pooler_output)
        predictions.append(torch.stack([head_logits.argmax(-1) for head_logits in logits], dim=-1))
    said = torch.cat(predictions)
    faces_object = targets[:, 0] != 0
    accuracy = {
        name: round(float((said[faces_object, k] == targets[faces_object, k]).float().mean()), 4)
        for k, name in enumerate(ATTRIBUTES)
    }
    accuracy["nothing"] = round(float(((said[:, 0] == 0) == ~faces_object).float().mean()), 4)
    return {"views": len(pixels), "views_facing_an_object": int(faces_object.sum()), "accuracy": accuracy}


def build_pretrained_tower(out_dir: Path, base_model_builder, save_preprocessor, recipe: dict = RECIPE) -> None:
    """Fill `out_dir` like a hub repository: the pretrained tower, its preprocessor and
    pretraining.json. `base_model_builder()` returns the (seeded) random-init tower to start from."""
    out_dir = Path(out_dir)
    tower = base_model_builder()
    with torch.random.fork_rng(devices=[]):
        heads, report = pretrain_tower(tower, recipe)
    held_out = held_out_accuracy(tower, heads, recipe)
    tower.save_pretrained(out_dir)
    save_preprocessor(out_dir)
    record = {
        "what": "tiny SigLIP tower pretrained to name the size, colour and shape of the object each SynthPano view faces",
        "recipe": recipe,
        "data": f"SynthPano pretext scenes (vlm_resampler.data.synthpano.scene.pretext_scene, seed {recipe['scene_seed']}, "
        f"indices 0..{recipe['scenes'] - 1}; held out: the next {recipe['held_out_scenes']})",
        "training": report,
        "held_out": held_out,
        **build_host(),
    }
    (out_dir / PRETRAINING_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
