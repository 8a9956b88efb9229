"""Experiment tracking (conf/logger/, docs/tracking.md): what the Trainer logs (loss, learning rate,
samples/s, ...) goes to the trackers that `logger.report_to` lists, through Trainer callbacks:

- tensorboard: event files in <stage dir>/tensorboard/ (transformers' TensorBoardCallback), so that
  `tensorboard --logdir <sweep dir>` shows every stage of every job;
- csv: <stage dir>/metrics.csv, one row per log line;
- mlflow: one parent run per job (the resolved config as params; experiment, sweep, job, git and
  SLURM tags; the eval's numbers after eval_after), one child run per stage (transformers'
  MLflowCallback: the log lines as metrics; parameter counts). The run ids are kept in
  <run dir>/mlflow_runs.json, so that a resumed run re-attaches to its runs.

Only rank 0 tracks. A tracker that fails (its store unreachable or not writable, its package
missing) says so in one warning line and is off for the rest of the job: training goes on."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import MLflowCallback, TensorBoardCallback

from vlm_resampler.runs import layout
from vlm_resampler.runs.atomic import write_text
from vlm_resampler.suggest import did_you_mean
from vlm_resampler.training import distributed
from vlm_resampler.training.interrupt import TrainingInterrupted
from vlm_resampler.training.mlflow_runs import MlflowJob, first_line, log_job_metrics, mlflow_errors

__all__ = ["JobTracking", "job_tracking", "log_job_metrics", "settings"]

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow", "csv")
INSTALL = {"tensorboard": "pip install 'tensorboard>=2.16'", "mlflow": "pip install -e '.[mlflow]'"}
# MLflowCallback starts a run of its own with these set; ours is already active.
OWN_RUN_ENV = ("MLFLOW_RUN_ID", "MLFLOW_NESTED_RUN")
RUN_STATUS = {layout.DONE: "FINISHED", layout.FAILED: "FAILED"}  # anything else: KILLED (resumable)


def settings(node) -> dict:
    """The `logger` node of a resolved config, checked; a bad value raises ValueError naming its key."""
    node = dict(node or {})
    report_to = node.get("report_to", [])
    if not isinstance(report_to, (list, tuple)):
        raise ValueError(f"logger.report_to={report_to!r}: expected a list of trackers, some of {', '.join(TRACKERS)}")
    for name in report_to:
        if name not in TRACKERS:
            raise ValueError(
                f"logger.report_to: unknown tracker {name!r}.{did_you_mean(str(name), TRACKERS)} "
                f"Expected some of {list(TRACKERS)} ([] for none)"
            )
    for key in ("tracking_uri", "experiment_name"):
        value = node.get(key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ValueError(
                f"logger.{key}={value!r}: expected a non-empty string, or null for the default (docs/tracking.md)"
            )
    return {
        "report_to": list(dict.fromkeys(report_to)),
        "tracking_uri": node.get("tracking_uri"),
        "experiment_name": node.get("experiment_name"),
    }


def tracking_errors(tracker: str) -> tuple[type[BaseException], ...]:
    """What a tracker's failure raises: the errors caught around tracking calls, and only there."""
    return mlflow_errors() if tracker == "mlflow" else (OSError,)


class JobTracking:
    """The trackers of one job (run directory): the stage callbacks, and the job's MLflow runs."""

    def __init__(self, cfg: dict, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        chosen = settings(cfg.get("logger"))
        self.on = chosen["report_to"] if distributed.is_main_process() else []
        self.mlflow: MlflowJob | None = None
        for tracker in [t for t in self.on if t in INSTALL]:
            if not package_available(tracker):
                self.fail(tracker, f"{tracker} is not installed ({INSTALL[tracker]})")
        if "mlflow" in self.on:
            self.mlflow = self.attempt(
                "mlflow", lambda: MlflowJob.open(cfg, self.run_dir, chosen["tracking_uri"], chosen["experiment_name"])
            )

    def attempt(self, tracker: str, action):
        """action()'s value, or None when the tracker is off or fails (then it is off)."""
        if tracker not in self.on:
            return None
        try:
            return action()
        except tracking_errors(tracker) as err:
            self.fail(tracker, first_line(err))
            return None

    def fail(self, tracker: str, why: str) -> None:
        if tracker in self.on:
            self.on.remove(tracker)
            log.warning("%s tracking is off for this run: %s; training goes on", tracker, why)

    @contextlib.contextmanager
    def stage(self, name: str, stage_dir: Path, resume_step: int | None, model, trainable) -> Iterator[list]:
        """The stage's tracker callbacks; its MLflow child run is active inside, ended on exit."""
        callbacks = []
        if "tensorboard" in self.on:
            callbacks.append(StageTensorBoard(Path(stage_dir) / layout.TENSORBOARD_DIR, resume_step))
        table = self.attempt("csv", lambda: CsvLog(Path(stage_dir) / layout.METRICS_CSV, resume_step))
        callbacks += [table] if table is not None else []
        child = self.attempt("mlflow", lambda: self.mlflow.start_stage(name, parameter_counts(model, trainable)))
        callbacks += [StageMLflow()] if child else []
        for callback in callbacks:
            callback.job = self
        status = "FAILED"
        try:
            yield callbacks
            status = "FINISHED"
        except (TrainingInterrupted, KeyboardInterrupt):
            status = "KILLED"
            raise
        finally:
            if child:
                self.end_stage_run(status)

    def end_stage_run(self, status: str) -> None:
        import mlflow

        try:
            mlflow.flush_async_logging()
            mlflow.end_run(status)
        except tracking_errors("mlflow") as err:
            self.fail("mlflow", first_line(err))

    def end(self) -> None:
        """The parent run ends as the run did (status.json): finished, failed, or killed (resumable)."""
        if self.mlflow is not None:
            from vlm_resampler.runs.locate import read_status

            state = (read_status(self.run_dir) or {}).get("status")
            self.attempt(
                "mlflow", lambda: self.mlflow.client.set_terminated(self.mlflow.parent, RUN_STATUS.get(state, "KILLED"))
            )


@contextlib.contextmanager
def job_tracking(cfg: dict, run_dir: Path) -> Iterator[JobTracking]:
    tracking = JobTracking(cfg, run_dir)
    try:
        yield tracking
    finally:
        tracking.end()


def package_available(tracker: str) -> bool:
    from transformers.integrations import is_mlflow_available, is_tensorboard_available

    return is_mlflow_available() if tracker == "mlflow" else is_tensorboard_available()


class Guarded:
    """A tracker's callback (mixin): its failure turns the tracker off (one warning), not the run."""

    tracker = ""
    job: JobTracking | None = None  # set by JobTracking.stage

    def _guard(self, method, *args, **kwargs):
        if self.job is None:
            return method(*args, **kwargs)
        return self.job.attempt(self.tracker, lambda: method(*args, **kwargs))

    def on_train_begin(self, args, state, control, **kwargs):
        return self._guard(super().on_train_begin, args, state, control, **kwargs)

    def on_log(self, args, state, control, **kwargs):
        return self._guard(super().on_log, args, state, control, **kwargs)

    def on_save(self, args, state, control, **kwargs):
        return self._guard(super().on_save, args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        return self._guard(super().on_train_end, args, state, control, **kwargs)


class StageTensorBoard(Guarded, TensorBoardCallback):
    """transformers' TensorBoard callback, writing into the stage's own directory. A stage started
    again hides what an earlier attempt logged after the step it resumes from (purge_step)."""

    tracker = "tensorboard"

    def __init__(self, log_dir: Path, resume_step: int | None) -> None:
        super().__init__()
        self.logging_dir = str(log_dir)
        self.purge_step = (resume_step or 0) + 1

    def _init_summary_writer(self, args) -> None:
        self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)


class StageMLflow(Guarded, MLflowCallback):
    """transformers' MLflow callback, logging into the stage's child run, which JobTracking made the
    active run (it then starts none: the variables that would make it start its own are ignored)."""

    tracker = "mlflow"

    def setup(self, args, state, model) -> None:
        hidden = {k: os.environ.pop(k) for k in OWN_RUN_ENV if k in os.environ}
        try:
            super().setup(args, state, model)
        finally:
            os.environ.update(hidden)


class CsvTable(TrainerCallback):
    """Every Trainer log line as a row of metrics.csv (step, then each number, by name); a name that
    appears later adds a column (the file is rewritten). Resuming at step N keeps the rows up to N."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.columns, self.rows = ["step"], []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or self.columns)
                self.rows = [r for r in reader if int(r["step"]) <= resume_step]
        self.rewrite()

    def rewrite(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, text.getvalue())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        numbers = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        row = {"step": state.global_step, **numbers}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self.rewrite()
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.columns, lineterminator="\n").writerow(row)


class CsvLog(Guarded, CsvTable):
    tracker = "csv"


def parameter_counts(model, trainable) -> dict[str, int]:
    """Exact counts: the model's, each top-level module's, and what the stage trains (by group)."""
    counts = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_params.trainable": sum(n for _, n in trainable),
    }
    for name, module in model.named_children():
        counts[f"n_params.{name}"] = sum(p.numel() for p in module.parameters())
    counts |= {f"n_params.trainable.{group}": n for group, n in trainable}
    return {k: v for k, v in counts.items() if v or k == "n_params.trainable"}
