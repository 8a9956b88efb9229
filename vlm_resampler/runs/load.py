"""Rebuild a model from a run or stage directory alone: the saved `_target_` tree (never `conf/`,
which may have changed since), then strict weight loading. A stage directory whose metadata is
gone, or is in the earlier system's ("guide") format, is rebuilt from what it states and its weight
shapes (vlm_resampler.runs.reconstruct), announced in the log."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from vlm_resampler.data.prompts import PromptFormat
from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch, load_weights, verify_files
from vlm_resampler.runs.guide_metadata import read_guide_metadata
from vlm_resampler.runs.locate import has_metadata, resolve_checkpoint_dir
from vlm_resampler.runs.metadata import read_metadata
from vlm_resampler.runs.provenance import RECONSTRUCTED, UserSettings, describe
from vlm_resampler.runs.reconstruct import reconstruct_metadata
from vlm_resampler.runs.targets import check_targets

log = logging.getLogger(__name__)


def build_model(model_tree: dict, seed: int):
    """Instantiate a model `_target_` tree (allow-listed) with a fixed seed for fresh weights."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    check_targets(model_tree)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return instantiate(OmegaConf.create(model_tree), _convert_="all")


def check_backbones(recorded: dict) -> None:
    from vlm_resampler.models.backbones import backbone_fingerprint, resolve_backbone

    for role, info in recorded.items():
        if not info.get("fingerprint"):
            continue
        found = backbone_fingerprint(resolve_backbone(info["name_or_path"]))
        if found != info["fingerprint"]:
            raise CheckpointMismatch(
                f"{role} backbone {info['name_or_path']!r} has fingerprint {found!r}, but the checkpoint "
                f"was trained on {info['fingerprint']!r}: the backbone weights changed since"
            )


@dataclass
class LoadedStage:
    model: torch.nn.Module
    tokenizer: object
    prompt: PromptFormat
    metadata: dict
    stage_dir: Path


def stage_metadata(stage_dir: Path, user: UserSettings | None) -> dict:
    """The stage's checkpoint_metadata.json, or one rebuilt from the weights when it is gone or is
    in the guide's format (then with the values that file states first)."""
    guide = None
    if has_metadata(stage_dir):
        guide = read_guide_metadata(stage_dir)
        if guide is None:
            return read_metadata(stage_dir)
    meta = reconstruct_metadata(stage_dir, user, guide)
    for line in describe(meta):
        log.warning("%s", line)
    return meta


def verify_stage(stage_dir: Path, meta: dict) -> None:
    if RECONSTRUCTED in meta:
        # The sha256 list and the backbone fingerprints live only in our metadata.
        without = (
            f"the guide-format {layout.METADATA} records"
            if meta[RECONSTRUCTED].get("guide_metadata")
            else f"without {layout.METADATA} there are"
        )
        log.warning(
            "not verified: %s no sha256 sums for the weight files and no backbone fingerprints to check them against",
            without,
        )
        return
    verify_files(stage_dir, meta["weights_sha256"])
    check_backbones(meta["backbones"])


def rebuilt_from(stage_dir: Path, meta: dict) -> str:
    """What the model tree was read from, for messages."""
    if RECONSTRUCTED not in meta:
        return str(stage_dir / layout.METADATA)
    if meta[RECONSTRUCTED].get("guide_metadata"):
        return f"{stage_dir / layout.METADATA} (guide format) and the weight shapes"
    return f"the weight shapes in {stage_dir}"


def load_stage(path: Path | str, verify: bool = True, user: UserSettings | None = None) -> LoadedStage:
    """`user`: model settings from the eval command line, used only when the metadata is gone."""
    from vlm_resampler.models.backbones import load_tokenizer

    stage_dir = resolve_checkpoint_dir(path)
    meta = stage_metadata(stage_dir, user)
    if verify:
        verify_stage(stage_dir, meta)
    else:
        log.warning(
            "not verified (--no-verify / verify=false): the sha256 of %s and the backbone fingerprints "
            "were not checked",
            ", ".join(str(stage_dir / rel) for rel in meta.get("weights_sha256") or {}) or "the weight files",
        )
    model = build_model(meta["model"], seed=0)
    source = rebuilt_from(stage_dir, meta)
    try:
        load_weights(model, stage_dir, meta["saved_modules"])
    except CheckpointMismatch as err:
        raise CheckpointMismatch(f"the model described by {source} does not fit its weights: {err}") from err
    model.eval()
    log.info(
        "rebuilt %s (stage %s, resampler=%s) from %s",
        type(model).__name__,
        meta["stage"],
        meta["resampler_type"],
        source,
    )
    tokenizer = load_tokenizer(meta["tokenizer"]["name_or_path"], meta["tokenizer"].get("revision"))
    return LoadedStage(model, tokenizer, PromptFormat(**meta["prompt"]), meta, stage_dir)


def load_from_run(path: Path | str, verify: bool = True, user: UserSettings | None = None) -> torch.nn.Module:
    """The model of a stage directory, or of a run directory's last completed stage, in eval mode."""
    return load_stage(path, verify=verify, user=user).model
