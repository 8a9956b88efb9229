"""Where each value of a rebuilt model's metadata came from (the guide-format file, the weights, the
run's saved config, the eval command line, an assumption), recorded under "reconstructed" and
printed for the log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlm_resampler.runs import layout
from vlm_resampler.runs.guide_metadata import (
    GUIDE_FORMAT,
)

RECONSTRUCTED = "reconstructed"
COMMAND_LINE = "the eval command line"
TOKEN_MLP = "vlm_resampler.models.projector.TokenMLP"
PANORAMA_VLM = "vlm_resampler.models.vlm.PanoramaVLM"


@dataclass
class UserSettings:
    """Model settings given on the eval command line (explicit overrides only, not group defaults)."""

    resampler: dict[str, Any] = field(default_factory=dict)  # resampler.<key>=value
    lora: dict[str, Any] = field(default_factory=dict)  # model.lora.<key>=value
    groups: dict[str, dict] = field(default_factory=dict)  # chosen groups (backbone, view, ...), resolved
    prompt: dict[str, Any] = field(default_factory=dict)  # prompt.<key>=value


@dataclass
class Provenance:
    guide: dict[str, Any] = field(default_factory=dict)  # stated by a guide-format checkpoint_metadata.json
    inferred: dict[str, Any] = field(default_factory=dict)
    saved_config: dict[str, Any] = field(default_factory=dict)
    saved_parts: list[str] = field(default_factory=list)  # whole parts of the model taken from the saved config
    command_line: dict[str, Any] = field(default_factory=dict)
    assumed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self, key: str, value: Any, origin: str) -> None:
        """File a value under the origin text that InferredResampler.resolve gave it."""
        if origin == COMMAND_LINE:
            self.command_line[key] = value
        elif origin == GUIDE_FORMAT:
            self.guide[key] = value
        elif origin.startswith(layout.RESOLVED_CONFIG):
            self.saved_config[key] = value
        elif origin.startswith("assumed "):
            self.assumed[key] = origin[len("assumed ") :]
        else:  # inferred, or derived from inferred shapes and a supplied value
            self.inferred[key] = value


def describe(meta: dict) -> list[str]:
    """Log lines: where each value of a reconstructed model came from."""
    rec = meta[RECONSTRUCTED]
    saved = (
        f"then the run's {rec['saved_config']}" if rec["saved_config"] else f"(there is no {layout.RESOLVED_CONFIG})"
    )
    if rec.get("guide_metadata"):
        lines = [
            f"{rec['guide_metadata']} is in the earlier system's (guide) format: the model was rebuilt from it, then "
            f"weight shapes, {saved}, then the command line (in that order of precedence)"
        ]
    else:
        lines = [
            f"no {layout.METADATA}: the model was rebuilt from weight shapes, {saved}, then the command line "
            "(in that order of precedence)"
        ]
    if rec.get("guide_values"):
        lines.append(f"  taken from {GUIDE_FORMAT}: {format_values(rec['guide_values'])}")
    if rec["inferred"]:
        lines.append(f"  inferred from weight shapes: {format_values(rec['inferred'])}")
    if rec["saved_config"]:
        lines.append(
            f"  taken from {layout.RESOLVED_CONFIG}: {', '.join(rec['saved_config_parts'])}"
            + (f"; {format_values(rec['saved_config_values'])}" if rec["saved_config_values"] else "")
        )
    if rec["command_line"]:
        lines.append(f"  taken from the command line: {format_values(rec['command_line'])}")
    for key, why in rec["assumed"].items():
        lines.append(f"  assumed {key}={why}")
    lines += [f"  note: {note}" for note in rec["notes"]]
    return lines


def format_values(values: dict) -> str:
    return ", ".join(
        f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}" for k, v in values.items() if not str(k).startswith("_")
    )


def brief_node(node: dict) -> str:
    return f"{str(node.get('_target_', '?')).rsplit('.', 1)[-1]}({format_values(node)})"
