"""Rebuild a model from a run or stage directory alone: its record (runs/record.py: the saved
`_target_` tree, never `conf/`, which may have changed since; or one rebuilt from what a guide-format
file states and the weight shapes, announced in the log), then strict weight loading."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from vlm_resampler.data.prompts import PromptFormat
from vlm_resampler.runs.checkpoint import CheckpointMismatch, load_weights
from vlm_resampler.runs.provenance import UserSettings
from vlm_resampler.runs.record import CheckpointRecord
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


@dataclass
class LoadedStage:
    model: torch.nn.Module
    tokenizer: object
    prompt: PromptFormat
    metadata: dict
    stage_dir: Path
    described_by: str  # what the model tree was read from (CheckpointRecord.described_by)


def load_stage(path: Path | str, verify: bool = True, user: UserSettings | None = None) -> LoadedStage:
    """`user`: model settings from the eval command line, used only when the metadata is gone."""
    from vlm_resampler.models.backbones import load_tokenizer

    record = CheckpointRecord.read(path, user)
    stage_dir, meta, source = record.stage_dir, record.metadata, record.described_by
    if verify:
        record.verify()
    else:
        log.warning(
            "not verified (--no-verify / verify=false): the sha256 of %s and the backbone fingerprints "
            "were not checked",
            ", ".join(str(stage_dir / rel) for rel in meta.get("weights_sha256") or {}) or "the weight files",
        )
    model = build_model(meta["model"], seed=0)
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
    return LoadedStage(model, tokenizer, PromptFormat(**meta["prompt"]), meta, stage_dir, source)


def load_from_run(path: Path | str, verify: bool = True, user: UserSettings | None = None) -> torch.nn.Module:
    """The model of a stage directory, or of a run directory's last completed stage, in eval mode."""
    return load_stage(path, verify=verify, user=user).model
