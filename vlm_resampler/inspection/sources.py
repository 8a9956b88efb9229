"""Where the model description comes from: command-line overrides, a run dir (its
resolved_config.yaml) or a stage dir (its checkpoint_metadata.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlm_resampler.config.checked import compose_checked
from vlm_resampler.errors import ConfigError, UserFacingError
from vlm_resampler.runs import layout


@dataclass
class Source:
    label: str  # what the user typed
    kind: str  # overrides | run_dir | stage_dir
    model_tree: dict  # the resolved `model` node (`_target_` tree)
    stages: list[str]
    stage_configs: dict[str, dict | None]  # None: the stage's settings are not known (see notes)
    recorded_trainable: dict[str, int] | None = None  # a stage dir's own record
    notes: list[str] = field(default_factory=list)
    # for the memory plan (inspection/memory.py): precision, gradient checkpointing; answer length
    compute: dict = field(default_factory=lambda: compute_of({}))
    answer_tokens: int = 48
    train_images: int | None = None  # whether the tower's features fit the cache; None: not known


def train_images_of(data) -> int | None:
    """Training images of a data config, where the config alone says (SynthPano's num_train; a
    QuIC-360 folder's count is in its CSVs)."""
    if data and data.get("name") == "synthpano" and data.get("num_train") is not None:
        return int(data["num_train"])
    return None


def compute_of(cfg) -> dict:
    return {
        "precision": str(cfg.get("precision") or "fp32"),
        "gradient_checkpointing": bool(cfg.get("gradient_checkpointing") or False),
        "attn_implementation": str(cfg.get("attn_implementation") or "sdpa"),
    }


def check_for_inspection(cfg: DictConfig) -> list[str]:
    """train.py's checks that concern the model and its stages."""
    from vlm_resampler.config.validate import MODEL_CHECKS, run_checks

    run_checks(cfg, MODEL_CHECKS)
    return []


def source_from_overrides(overrides: list[str], label: str | None = None) -> Source:
    cfg, notes = compose_checked(overrides, check_for_inspection)
    stages = list(cfg.stages)
    return Source(
        label=label if label is not None else (" ".join(overrides) or "(defaults)"),
        kind="overrides",
        model_tree=OmegaConf.to_container(cfg.model, resolve=True),
        stages=stages,
        stage_configs={s: OmegaConf.to_container(cfg.stage[s], resolve=True) for s in stages},
        notes=notes,
        compute=compute_of(cfg),
        answer_tokens=int(cfg.data.max_answer_tokens),
        train_images=train_images_of(cfg.data),
    )


def _load_resolved_config(path: Path) -> dict:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # a damaged file: say which
        raise ConfigError(f"{path}: cannot be read as YAML ({err})") from err


def source_from_dir(path: Path, label: str | None = None) -> Source:
    """A run dir (its resolved_config.yaml: every stage) or a stage dir (its checkpoint_metadata.json:
    that stage; its settings from the run's resolved_config.yaml when the run dir holds one)."""
    from vlm_resampler.runs.record import CheckpointRecord

    label = label or str(path)
    if layout.is_stage_dir(path):
        try:
            meta = CheckpointRecord.read(path).metadata
        except UserFacingError as err:  # damaged, or a rebuild its files cannot complete
            raise ConfigError(str(err)) from err
        stage = meta["stage"]
        run_config = path.parent / layout.RESOLVED_CONFIG
        stage_config, notes, data = None, [], None
        if run_config.is_file():
            run = _load_resolved_config(run_config)
            stage_config, data = run.get("stage", {}).get(stage), run.get("data")
        if stage_config is None:
            notes.append(
                f"{run_config} has no settings for stage {stage!r}: its trainable counts are the ones recorded in the metadata"
            )
        source = Source(label, "stage_dir", meta["model"], [stage], {stage: stage_config}, meta.get("trainable"), notes)
        source.compute = compute_of(meta.get("compute") or {})
        source.answer_tokens = int((meta.get("data") or {}).get("max_answer_tokens", source.answer_tokens))
        source.train_images = train_images_of(data)
        return source
    if layout.is_run_dir(path):
        cfg = _load_resolved_config(path / layout.RESOLVED_CONFIG)
        stages = list(cfg.get("stages") or [])
        source = Source(label, "run_dir", cfg["model"], stages, {s: cfg["stage"][s] for s in stages})
        source.compute = compute_of(cfg)
        source.answer_tokens = int((cfg.get("data") or {}).get("max_answer_tokens", source.answer_tokens))
        source.train_images = train_images_of(cfg.get("data"))
        return source
    raise ConfigError(
        f"{path}: neither a run directory (with {layout.RESOLVED_CONFIG}) nor a stage directory (with {layout.METADATA})"
    )


def source_from_args(args: list[str], label: str | None = None) -> Source:
    """One directory, or any number of overrides."""
    paths = [a for a in args if "=" not in a and not a.startswith(("~", "+"))]
    if not paths:
        return source_from_overrides(args, label)
    if len(args) != 1:
        raise ConfigError(
            f"{paths[0]}: a run or stage directory is inspected on its own (the model is the one it "
            f"recorded); got it together with {' '.join(a for a in args if a != paths[0])}"
        )
    path = Path(paths[0])
    if not path.is_dir():
        raise ConfigError(f"{paths[0]}: not an override (key=value) and not an existing run or stage directory")
    return source_from_dir(path, label)
