"""The one way to read what a checkpoint is: `CheckpointRecord.read(stage_dir)`.

A stage directory describes its model in one of three ways, each read here and nowhere else:
- `metadata`: our checkpoint_metadata.json, used as it is (sha256 sums and backbone fingerprints
  included, so the files can be verified);
- `guide`: a checkpoint_metadata.json in the earlier system's format, completed from the weight
  shapes, the run's saved config and the command line (runs/reconstruct.py);
- `weights`: no metadata file; the same, without the file's values.
Whatever the source, `metadata` has checkpoint_metadata.json's layout; a rebuilt one says under
its "reconstructed" key where every value came from (runs/provenance.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch, verify_files
from vlm_resampler.runs.guide_metadata import read_guide_metadata
from vlm_resampler.runs.locate import has_metadata, resolve_checkpoint_dir
from vlm_resampler.runs.metadata import read_metadata
from vlm_resampler.runs.provenance import RECONSTRUCTED, UserSettings, describe
from vlm_resampler.runs.reconstruct import reconstruct_metadata

log = logging.getLogger(__name__)

KINDS = ("metadata", "guide", "weights")


@dataclass(frozen=True)
class CheckpointRecord:
    stage_dir: Path
    metadata: dict
    kind: str  # one of KINDS

    @classmethod
    def read(cls, path: Path | str, user: UserSettings | None = None) -> CheckpointRecord:
        """The record of a stage dir (or of a run dir's last completed stage). `user`: model
        settings from the eval command line, used only where no file says them."""
        stage_dir = resolve_checkpoint_dir(path)
        guide = None
        if has_metadata(stage_dir):
            guide = read_guide_metadata(stage_dir)
            if guide is None:
                return cls(stage_dir, read_metadata(stage_dir), "metadata")
        record = cls(stage_dir, reconstruct_metadata(stage_dir, user, guide), "guide" if guide else "weights")
        for line in describe(record.metadata):
            log.warning("%s", line)
        return record

    @property
    def described_by(self) -> str:
        """What the model tree was read from, for messages."""
        if self.kind == "metadata":
            return str(self.stage_dir / layout.METADATA)
        if self.kind == "guide":
            return f"{self.stage_dir / layout.METADATA} (guide format) and the weight shapes"
        return f"the weight shapes in {self.stage_dir}"

    @property
    def backbone_names(self) -> list[str]:
        return [backbone["name_or_path"] for backbone in self.metadata["backbones"].values()]

    def verify(self) -> None:
        """The sha256 of every weight file and the backbones' fingerprints against the record
        (only our metadata has them: a rebuilt record is announced as not verified)."""
        if self.kind != "metadata":
            without = (
                f"the guide-format {layout.METADATA} records"
                if self.kind == "guide"
                else f"without {layout.METADATA} there are"
            )
            log.warning(
                "not verified: %s no sha256 sums for the weight files and no backbone fingerprints to check them against",
                without,
            )
            return
        verify_files(self.stage_dir, self.metadata["weights_sha256"])
        check_backbones(self.metadata["backbones"])

    @property
    def reconstructed(self) -> dict | None:
        """Where each value of a rebuilt record came from (None for our metadata)."""
        return self.metadata.get(RECONSTRUCTED)


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
