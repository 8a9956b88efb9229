"""Checks of what a config points at outside itself: the data directory, the checkpoint a run
continues from, the backbones this machine can load, and the run directory it would write into.
The checks of the config's own values are in config/validate.py, which runs these as named sets."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlm_resampler.catalog import CONF_DIR
from vlm_resampler.errors import ConfigError
from vlm_resampler.runs.layout import METADATA, RESUMABLE, STAGE_NAMES, STATUS, is_stage_dir
from vlm_resampler.runs.metadata import read_metadata
from vlm_resampler.runs.tree_diff import tree_differences


def check_data(cfg: DictConfig) -> None:
    """Real data must be where the config says before anything trains (SynthPano generates itself)."""
    if cfg.data.name != "quic360":
        return
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError("data=quic360 needs data.root=/path/to/quic360 (the folder holding its CSVs and images)")
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root={cfg.data.root!r}: not a directory")
    train_csv = root / cfg.data.splits.train
    if not train_csv.is_file():
        raise ConfigError(f"data.splits.train={cfg.data.splits.train!r}: {train_csv} not found")


def check_init_from(cfg: DictConfig) -> None:
    """A run that continues from a checkpoint must describe the same model: a setting that
    disagrees would otherwise be silently replaced by the checkpoint's."""
    if cfg.init_from is None:
        return
    path = Path(cfg.init_from)
    if not is_stage_dir(path):
        raise ConfigError(
            f"init_from={cfg.init_from!r}: not a stage directory (expected runs/NAME/STAGE with a {METADATA})"
        )
    try:
        saved = read_metadata(path)["model"]
    except ValueError as err:
        raise ConfigError(f"init_from={cfg.init_from!r}: {err}") from err
    wanted = OmegaConf.to_container(cfg.model, resolve=True)
    saved, wanted = dict(saved), dict(wanted)
    saved_type, wanted_type = (resampler_option(m.get("resampler")) for m in (saved, wanted))
    if saved_type != wanted_type:
        raise ConfigError(
            f"init_from={cfg.init_from}: holds a resampler={saved_type} checkpoint, but this config builds "
            f"resampler={wanted_type}; add resampler={saved_type} (with the checkpoint's settings) or train anew"
        )
    saved.pop("lora", None)
    wanted.pop("lora", None)
    differences = tree_differences(wanted, saved, "model")
    if differences:
        raise ConfigError(
            f"init_from={cfg.init_from}: the configured model differs from the checkpoint's; "
            "continue with the checkpoint's settings or train anew:\n  " + "\n  ".join(differences[:10])
        )


def resampler_option(node) -> str:
    """The conf/resampler option whose class a model tree's resampler node names (else the class)."""
    target = str((node or {}).get("_target_", "?"))
    for path in sorted((CONF_DIR / "resampler").glob("*.yaml")):
        if OmegaConf.load(path).get("_target_") == target:
            return path.stem
    return target


def check_backbones_available(cfg: DictConfig) -> None:
    """A hub name without a hub fails now. Locally built backbones are built now where that takes
    seconds; the pretrained ones (minutes) when training starts: checks need only their declared
    architecture."""
    from vlm_resampler.models.backbones import resolve_backbone
    from vlm_resampler.models.local_backbones import DECLARED_ARCHITECTURES, BackboneUnavailableError

    for key in ("vision_encoder", "language_model"):
        node = cfg.model[key]
        if str(node.name_or_path) in DECLARED_ARCHITECTURES:
            continue
        try:
            resolve_backbone(str(node.name_or_path), node.revision)
        except BackboneUnavailableError as err:
            raise ConfigError(f"model.{key}.name_or_path={node.name_or_path!r}: {err}") from err


def check_run_dir_free(cfg: DictConfig) -> None:
    """Never train into a directory that already holds a run (its checkpoints would be mixed),
    except to resume it: an unfinished run (status running or interrupted) of the identical
    resolved config, which no live process is training into."""
    from vlm_resampler.runs.locate import DamagedStatus, read_status
    from vlm_resampler.training import resume

    run_dir = Path(cfg.hydra.run.dir)
    if not (run_dir / STATUS).exists() and not any(is_stage_dir(run_dir / s) for s in STAGE_NAMES):
        return
    try:
        status = (read_status(run_dir) or {}).get("status")
    except DamagedStatus as err:
        raise ConfigError(
            f"{err}: whether the run in {run_dir} may be resumed is unknown (experiment.name="
            f"{cfg.experiment.name!r}); choose another experiment.name, or repair the file to resume it"
        ) from err
    if status not in RESUMABLE:
        ended = f" (status {status!r})" if status else ""
        raise ConfigError(
            f"{run_dir} already holds a run{ended} (experiment.name={cfg.experiment.name!r}); "
            "choose another experiment.name"
        )
    holder = resume.lock_holder(run_dir)
    if holder:
        raise ConfigError(
            f"{run_dir}: a process is still training into this run ({holder}); wait for it or stop it first"
        )
    task = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    differences = resume.config_differences(run_dir, OmegaConf.to_container(task, resolve=True))
    if differences:
        raise ConfigError(resume.different_config_message(run_dir, differences))
