"""Where a checkpoint is and what is left of it: a run or stage directory resolved to the stage to
load, a save that did not finish refused, the run's saved config and the weights' shapes read."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vlm_resampler.errors import UserFacingError
from vlm_resampler.resamplers.shape_rules import Shapes
from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch

log = logging.getLogger(__name__)

# ---- where a checkpoint is ----------------------------------------------------------------


def has_metadata(stage_dir: Path) -> bool:
    return layout.is_stage_dir(stage_dir)


def is_weights_only_stage_dir(path: Path) -> bool:
    path = Path(path)
    return (
        path.is_dir()
        and not (path / layout.METADATA).is_file()
        and (path / layout.WEIGHTS).is_file()
        and not save_unfinished(path)
    )


def save_unfinished(stage_dir: Path) -> bool:
    return (Path(stage_dir) / layout.SAVING).exists()


def resolve_checkpoint_dir(path: Path | str) -> Path:
    """A stage dir (with metadata, or with weights only), or a run dir's last completed stage,
    where a stage whose metadata is gone counts as completed when the run's status.json says so."""
    path = Path(path)
    if save_unfinished(path):
        raise layout.NoCheckpointError(
            f"{path}: a save into it did not finish (it holds {layout.SAVING}: the process stopped while replacing "
            "its checkpoint), so it holds no checkpoint; train that stage again"
        )
    if is_weights_only_stage_dir(path):
        return path
    if layout.is_run_dir(path) and not layout.is_stage_dir(path):
        done = [
            s
            for s in layout.STAGE_NAMES
            if has_metadata(path / s) or (is_weights_only_stage_dir(path / s) and completed(path, s))
        ]
        if done and not has_metadata(path / done[-1]):
            log.warning(
                "%s: its last completed stage, %s, has no %s; it is rebuilt from its weights",
                path,
                done[-1],
                layout.METADATA,
            )
            return path / done[-1]
        for name in layout.STAGE_NAMES:
            if is_weights_only_stage_dir(path / name) and name not in done:
                # Not taken: it may be an interrupted save.
                log.warning(
                    "%s has %s but no %s, and the run's %s does not list it as completed; not evaluated",
                    path / name,
                    layout.WEIGHTS,
                    layout.METADATA,
                    layout.STATUS,
                )
    return layout.resolve_stage_dir(path)


class DamagedStatus(UserFacingError, ValueError):
    """A run's status.json that does not parse (named in the message)."""


def read_status(run_dir: Path) -> dict | None:
    """A run's status.json (None before it has one)."""
    path = Path(run_dir) / layout.STATUS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DamagedStatus(f"{path} is not valid JSON ({err})") from err


def completed(run_dir: Path, stage: str) -> bool:
    return stage in (read_status(run_dir) or {}).get("completed", [])


def saved_config_path(stage_dir: Path) -> Path:
    return Path(stage_dir).parent / layout.RESOLVED_CONFIG


def read_saved_config(stage_dir: Path) -> dict | None:
    path = saved_config_path(stage_dir)
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    for key in ("model", "backbone", "prompt", "data"):
        if not isinstance(cfg.get(key), dict):
            raise ValueError(f"{path}: no `{key}:` section; it is not a resolved run config")
    return cfg


def backbone_names(stage_dir: Path, backbone_group: dict | None) -> list[str]:
    """The backbone names a weights-only checkpoint will load (for hub configuration)."""
    saved = read_saved_config(stage_dir)
    model = saved["model"] if saved else (backbone_group or {})
    return [model[k]["name_or_path"] for k in ("vision_encoder", "language_model") if isinstance(model.get(k), dict)]


def weight_shapes(path: Path) -> Shapes:
    """Tensor shapes from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def split_modules(shapes: Shapes) -> dict[str, Shapes]:
    modules: dict[str, Shapes] = {}
    for key, shape in shapes.items():
        head, _, rest = key.partition(".")
        modules.setdefault(head, {})[rest] = shape
    return modules


def check_stage_completed(stage_dir: Path) -> None:
    """A run's status.json knows whether this stage finished; weights of one that did not may be partial."""
    record = read_status(stage_dir.parent)
    if record is None or stage_dir.name not in layout.STAGE_NAMES:
        return
    if stage_dir.name in record.get("stages", []) and stage_dir.name not in record.get("completed", []):
        raise CheckpointMismatch(
            f"{stage_dir}: {stage_dir.parent / layout.STATUS} says stage {stage_dir.name} never completed (status {record.get('status')!r}); "
            f"its weights may be an interrupted save, and it has no {layout.METADATA}"
        )
