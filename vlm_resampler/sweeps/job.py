"""After a training job (a single run or one job of a sweep), with eval_after=true: an evaluation
of the last stage, so that a sweep ends with metrics in every job directory. The evaluation is
launch/eval.py in a child process (its own Hydra, composed from the same conf/ as the job: a
sweep's snapshot), its output in <run dir>/eval.log."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig

from vlm_resampler.runs import layout
from vlm_resampler.runs.atomic import write_json, write_text
from vlm_resampler.runs.locate import read_status
from vlm_resampler.runs.run_meta import REPO_ROOT
from vlm_resampler.sweeps import dirs  # noqa: F401  (registers the job-directory resolver in job processes)

EVAL_LOG = "eval.log"


def on_rank_zero() -> bool:
    """Rank 0 of a torchrun (RANK) or of a multi-task SLURM job (SLURM_PROCID), or a single process."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def primary_conf_dir() -> Path | None:
    """The conf/ this job was composed from (a sweep's snapshot, or the repository's)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    for source in HydraConfig.get().runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(source.path)
    return None


def eval_command(cfg: DictConfig, stage_dir: Path) -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    command = [sys.executable, str(REPO_ROOT / "launch" / "eval.py")]
    conf_dir = primary_conf_dir()
    if conf_dir is not None:
        command.append(f"--config-path={conf_dir}")  # flags before the overrides (argparse)
    command.append(f"checkpoint_dir={stage_dir}")
    debug = HydraConfig.get().runtime.choices.get("debug") if HydraConfig.initialized() else None
    # eval has its own debug options (conf/eval_debug): a smoke training run gets a smoke eval.
    if debug and debug != "null" and ((conf_dir or REPO_ROOT / "conf") / "eval_debug" / f"{debug}.yaml").is_file():
        command.append(f"debug={debug}")
    # Iterating a ListConfig gives its resolved values; the default, an empty list, adds nothing.
    command += [str(a) for a in cfg.get("eval_args") or []]
    return command


def evaluate_after_training(cfg: DictConfig, run_dir: Path, stage_dir: Path) -> None:
    """launch/eval.py on the finished run's last stage; a failure marks the job failed."""
    status = read_status(run_dir) or {}
    write_json(run_dir / layout.STATUS, status | {"status": "running", "step": "eval"})
    command = eval_command(cfg, stage_dir)
    print("eval_after: " + " ".join(command), flush=True)
    with open(run_dir / EVAL_LOG, "w") as log:
        done = subprocess.run(command, cwd=Path.cwd(), stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = (run_dir / EVAL_LOG).read_text().strip().splitlines()[-40:]
        write_text(run_dir / layout.TRACEBACK, f"$ {' '.join(command)}\n" + "\n".join(tail) + "\n")
        error = f"eval after training failed (exit {done.returncode}): {tail[-1] if tail else ''}"
        write_json(
            run_dir / layout.STATUS,
            status | {"status": "failed", "step": "eval", "error": error, "traceback": layout.TRACEBACK},
        )
        raise RuntimeError(f"{error}; see {run_dir / EVAL_LOG}")
    write_json(run_dir / layout.STATUS, status | {"status": "done", "eval": str(Path(stage_dir.name) / "eval")})
    print(f"eval_after: metrics under {stage_dir / 'eval'}", flush=True)
    track_eval(run_dir, stage_dir)


def track_eval(run_dir: Path, stage_dir: Path) -> None:
    """The eval's numbers, as <split>/<name> (test/CIDEr, test/image_gap: optimized_metric's names),
    on the job's MLflow parent run where it has one (logger=mlflow)."""
    import json

    from vlm_resampler.sweeps.collect import eval_numbers
    from vlm_resampler.training.tracking import log_job_metrics

    numbers = {}
    for path in sorted((Path(stage_dir) / "eval").glob("*/metrics.json")):
        metrics = json.loads(path.read_text(encoding="utf-8"))
        split = metrics.get("split") or path.parent.name.rsplit("-", 1)[-1]
        numbers |= {f"{split}/{name}": value for name, value in eval_numbers(metrics).items()}
    log_job_metrics(run_dir, numbers)


def evaluate_if_asked(cfg: DictConfig, run_dir: Path, stage_dir: Path) -> None:
    """With eval_after=true: launch/eval.py on the last stage of the finished run (rank 0 only
    under torchrun). A failure marks the job failed (status.json, traceback.txt) and raises."""
    if not cfg.get("eval_after") or not on_rank_zero():
        return
    run_dir = Path(run_dir)
    try:
        evaluate_after_training(cfg, run_dir, Path(stage_dir))
    except RuntimeError:
        raise
    except BaseException as err:  # interrupted or unexpected: still say so in the job dir
        write_text(run_dir / layout.TRACEBACK, traceback.format_exc())
        write_json(
            run_dir / layout.STATUS,
            (read_status(run_dir) or {})
            | {"status": "failed", "step": "eval", "error": f"{type(err).__name__}: {err}"},
        )
        raise


def objective_if_asked(cfg: DictConfig, stage_dir: Path) -> float | None:
    """With optimized_metric set (an Optuna study's jobs): that number from the eval of the last
    stage, returned by the task function to the sweeper. None elsewhere, and on ranks other than 0."""
    from vlm_resampler.sweeps.collect import objective_value

    metric = cfg.get("optimized_metric")
    if not metric or not on_rank_zero():
        return None
    return objective_value(Path(stage_dir), str(metric))


def train_task_function():
    """launch/train.py's Hydra task function (what a sweep job runs), for jobs submitted again
    by launch/summarize.py --resume. Loaded from the file under another module name: its
    command-line part does not run, and submitit pickles the function by value, as it does when
    train.py itself submits."""
    import runpy

    namespace = runpy.run_path(str(REPO_ROOT / "launch" / "train.py"), run_name="vlm_resampler_train_entry")
    return namespace["main"].__wrapped__
