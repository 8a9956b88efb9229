"""Names of the files in a run directory (see DESIGN.md), in one place."""

from __future__ import annotations

from pathlib import Path

from vlm_resampler.errors import UserFacingError

RESOLVED_CONFIG = "resolved_config.yaml"
RUN_META = "run_meta.json"
STATUS = "status.json"
TRACEBACK = "traceback.txt"
METADATA = "checkpoint_metadata.json"
WEIGHTS = "model.safetensors"
# In a stage directory from the moment a save starts replacing its files until the new checkpoint
# is complete: a directory holding it was left by a save that did not finish, and is no checkpoint.
SAVING = ".saving"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"  # peft's own: adapter/ loads with PeftModel.from_pretrained as well
TRAIN_METRICS = "train_metrics.json"
TRAIN_LOG = "train_log.jsonl"
LOSS_PLOT = "loss_curve.png"
# Experiment tracking (conf/logger/, training/tracking.py): per stage, TensorBoard's event files and
# the CSV of the Trainer's log lines; per run, the MLflow run ids a resumed run re-attaches to.
TENSORBOARD_DIR = "tensorboard"
METRICS_CSV = "metrics.csv"
MLFLOW_RUNS = "mlflow_runs.json"
MLFLOW_DB = "mlflow.db"  # the default MLflow store: sqlite:///<sweep dir, or run dir>/mlflow.db
STAGE_NAMES = ("vision", "resampler", "finetune")
# Inside a stage directory while it trains: the Trainer's resumable checkpoints
# (resume/checkpoint-<step>/, one complete once it holds RESUME_COMPLETE); removed when the stage completes.
RESUME_DIR = "resume"
RESUME_COMPLETE = ".complete"
# Held (flock) by the process that trains into a run directory.
LOCK = ".train.lock"

# status.json "status" values. A run that is running or interrupted (and was not marked failed)
# is resumed by running the same command again.
RUNNING = "running"
INTERRUPTED = "interrupted"
DONE = "done"
FAILED = "failed"
RESUMABLE = (RUNNING, INTERRUPTED)


class NoCheckpointError(UserFacingError, FileNotFoundError):
    """A path given as a checkpoint holds none (named in the message)."""


def is_stage_dir(path: Path) -> bool:
    return (Path(path) / METADATA).is_file() and not (Path(path) / SAVING).exists()


def is_run_dir(path: Path) -> bool:
    return (Path(path) / RESOLVED_CONFIG).is_file()


def last_completed_stage(run_dir: Path) -> Path:
    """The stage directory of the last stage (in training order) that saved a checkpoint."""
    run_dir = Path(run_dir)
    done = [run_dir / s for s in STAGE_NAMES if is_stage_dir(run_dir / s)]
    if not done:
        raise NoCheckpointError(f"{run_dir}: no completed stage (none of {', '.join(STAGE_NAMES)} holds a {METADATA})")
    return done[-1]


def resolve_stage_dir(path: Path) -> Path:
    """Accept a stage directory or a run directory (its last completed stage)."""
    path = Path(path)
    if not path.exists():
        raise NoCheckpointError(f"checkpoint directory {path} does not exist")
    if is_stage_dir(path):
        return path
    if is_run_dir(path):
        return last_completed_stage(path)
    raise NoCheckpointError(
        f"{path} is neither a stage directory (with {METADATA}) nor a run directory (with {RESOLVED_CONFIG})"
    )
