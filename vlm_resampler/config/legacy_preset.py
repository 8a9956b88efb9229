"""An imported preset (`Preset`: what the old file says, in our terms) and writing it: values as
YAML that OmegaConf reads back unchanged, nested as conf/experiment/ presets are, written atomically
and never over another file unless asked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vlm_resampler.catalog import CONF_DIR
from vlm_resampler.config.legacy_fields import DEFAULT, override_value, yaml_value
from vlm_resampler.errors import ConfigError


@dataclass
class Preset:
    """What the old file says, in our terms."""

    name: str
    source: str
    resampler: str
    groups: dict[str, str]  # group -> option (defaults overrides), resampler first
    values: dict[str, object]  # dotted key -> value, in the order they are written
    origins: dict[str, str]  # dotted key -> the old key it came from, or DEFAULT
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (old key, what it became), for the log
    notes: list[str] = field(default_factory=list)
    description: str | None = None

    @property
    def path(self) -> Path:
        return CONF_DIR / "experiment" / f"{self.name}.yaml"

    def overrides(self) -> list[str]:
        """The same settings as command-line overrides (to check them before anything is written)."""
        return [f"{g}={o}" for g, o in self.groups.items()] + [
            f"{k}={override_value(v)}" for k, v in self.values.items()
        ]


# ---------------------------------------------------------------------------------------------
# Writing the preset.
# ---------------------------------------------------------------------------------------------


def _nest(values: dict[str, object]) -> dict:
    tree: dict = {}
    for key, value in values.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = (key, value)
    return tree


def render_preset(preset: Preset) -> str:
    source_name = Path(preset.source).name
    lines = [
        "# @package _global_",
        f"# Imported from {source_name} (the guide's config format) by launch/import_config.py.",
    ]
    if preset.description:
        lines += [f"# {line}".rstrip() for line in preset.description.splitlines()]
    lines.append("defaults:")
    lines += [f"  - override /{group}: {option}" for group, option in preset.groups.items()]

    def emit(node: dict, indent: int) -> None:
        for key, item in node.items():
            if isinstance(item, dict):
                lines.append(" " * indent + f"{key}:")
                emit(item, indent + 2)
            else:
                dotted, value = item
                origin = preset.origins.get(dotted, "")
                comment = origin
                if origin == DEFAULT:
                    comment = (
                        f"not in {source_name}: the default of conf/resampler/{preset.resampler}.yaml"
                        if dotted.startswith("resampler.")
                        else ""
                    )
                lines.append(" " * indent + f"{key}: {yaml_value(value)}" + (f"  # {comment}" if comment else ""))

    tree = _nest(preset.values)
    for key, item in tree.items():
        lines.append("")
        emit({key: item}, 0)
    return "\n".join(lines) + "\n"


def write_preset(path: Path, text: str, force: bool) -> None:
    """All or nothing; an existing preset is replaced only with `force` (and never raced into)."""
    from vlm_resampler.runs.atomic import write_text

    if force:
        write_text(path, text)
        return
    if path.exists():
        raise ConfigError(f"{path} exists already; pass --force to replace it, or choose another name with --name")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_text(tmp, text)
        os.link(tmp, path)  # fails if the file appeared meanwhile: no overwrite
    except FileExistsError as err:
        raise ConfigError(
            f"{path} exists already; pass --force to replace it, or choose another name with --name"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)
