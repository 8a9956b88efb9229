"""The frozen vision encoder's view features, computed once per (tower, view plan, images) and reused.

A stage that does not train the vision tower sees the same features of an image at every step
(views are cut deterministically, there is no augmentation), so recomputing them each step is
pure cost. They are computed once, saved under `<cache>/features/<key>.safetensors` (atomically)
and served by image path from that file, which safetensors maps into memory. The key covers
everything they depend on: the tower's fingerprint, the view strategy and its settings, the
normalisation, the ERP size, and each image's path, size and modification time. The tower's
fingerprint is the sha256 of its current weights. A disk without room for them costs the cache,
not the stage: the table then stays in the process's memory, and the stage's line says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlm_resampler.cache import cache_root
from vlm_resampler.data.datasets import load_panorama
from vlm_resampler.runs.atomic import atomic_path
from vlm_resampler.runs.disk_space import is_out_of_space

log = logging.getLogger(__name__)
BATCH = 32
# Past this the features stay uncached (recomputed every step), with a log line saying so: a real
# SigLIP at 9 views holds ~30 MB per image.
MAX_BYTES = int(float(os.environ.get("VLM_RESAMPLER_FEATURE_CACHE_MAX_GB", "8")) * 2**30)


def feature_key(model, tower_fingerprint: str, images: list[str], width: int, height: int) -> str:
    files = []
    for image in images:
        stat = Path(image).stat()
        files.append([image, stat.st_size, stat.st_mtime_ns])
    description = {
        "tower": tower_fingerprint,
        "views": [type(model.views).__name__, model.views.settings()],
        "mean": model.image_mean.flatten().tolist(),
        "std": model.image_std.flatten().tolist(),
        "erp": [width, height],
        "images": files,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def tower_fingerprint(vision) -> str:
    """sha256 over the tower's own weights (an earlier stage may have trained some of its blocks,
    so the backbone's file fingerprint is not enough)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vision.state_dict().items()):
        digest.update(name.encode() + b"\0" + str(tensor.dtype).encode() + str(list(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_bytes(model, count: int) -> int:
    gh, gw = model.view_grid
    return count * model.num_views * gh * gw * model.vision.hidden_size * 4


@torch.no_grad()
def compute_features(model, images: list[str], width: int, height: int) -> torch.Tensor:
    """[N, V, S, D] float32 on the CPU (the data loader serves them from there), in the order of
    `images`; computed on the model's device."""
    from tqdm import tqdm

    was_training = model.vision.training
    model.vision.eval()
    gh, gw = model.view_grid
    # filled in place: a list of chunks joined at the end would hold the table twice at its peak
    features = torch.empty(len(images), model.num_views, gh * gw, model.vision.hidden_size)
    for start in tqdm(range(0, len(images), BATCH), desc="vision features", unit="batch"):
        panoramas = torch.stack([load_panorama(Path(p), width, height) for p in images[start : start + BATCH]])
        features[start : start + len(panoramas)] = model.view_features(panoramas.to(model.device)).float().cpu()
    model.vision.train(was_training)
    return features


class FeatureTable:
    """Image path -> the frozen tower's view features [V, S, D]."""

    def __init__(self, images: list[str], features: torch.Tensor, source: str) -> None:
        self.index = {image: i for i, image in enumerate(images)}
        self.features = features
        self.source = source

    def __getitem__(self, image: str) -> torch.Tensor:
        return self.features[self.index[str(image)]]


def cached_features(model, fingerprint: str, images: list[str], width: int, height: int) -> FeatureTable | None:
    """The features of `images` from the cache, computed and saved first if missing; None when they
    would exceed MAX_BYTES (the caller then runs the tower every step)."""
    images = sorted({str(i) for i in images})
    size = feature_bytes(model, len(images))
    if size > MAX_BYTES:
        log.warning(
            "vision features of %d images would take %.1f GiB (> VLM_RESAMPLER_FEATURE_CACHE_MAX_GB): "
            "not cached, the frozen tower runs every step",
            len(images),
            size / 2**30,
        )
        return None
    path = cache_root() / "features" / f"{feature_key(model, fingerprint, images, width, height)}.safetensors"
    if path.is_file():
        return FeatureTable(images, load_file(str(path))["features"], f"reused {path}")
    started = time.perf_counter()
    features = compute_features(model, images, width, height)
    took = f"computed in {time.perf_counter() - started:.1f} s"
    try:
        # fsynced before the rename, removed on failure (no partial GiBs left behind); a concurrent
        # builder wrote the same bytes: either rename wins
        with atomic_path(path) as tmp:
            save_file({"features": features}, str(tmp))
    except Exception as err:
        if not is_out_of_space(err):
            raise
        # The cache only saves time: the stage goes on with the table in this process's memory.
        return FeatureTable(images, features, f"{took}, not saved ({path.parent} has no space left)")
    del features
    # Served from the file: safetensors maps it, so the table sits once in the page cache for every
    # process of the node that maps it (DDP ranks, loader workers) and the kernel may reclaim it,
    # where the computed tensor would be each process's own memory for the whole stage.
    return FeatureTable(images, load_file(str(path))["features"], f"{took}, saved to {path}")
