"""MLflow for training/tracking.py: one parent run per job (the resolved config as params;
experiment, sweep, job, git and SLURM tags; numbers logged after training, like the eval's) and one
child run per stage, their ids kept in <run dir>/mlflow_runs.json so that a resumed run (the same
command again, a requeued SLURM job) re-attaches to them instead of starting new ones."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from vlm_resampler.runs import layout
from vlm_resampler.runs.atomic import write_json
from vlm_resampler.runs.run_meta import git_state, group_choices
from vlm_resampler.training import distributed

log = logging.getLogger(__name__)

PARAM_VALUE_LIMIT = 250  # characters: the least any MLflow store takes (recent ones take 6000)
BATCH_LIMIT = 100  # params, or tags, in one MLflow call
SLURM_TAGS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
# A tracking server that does not answer fails the job's first MLflow call within seconds
# (MLflow's defaults: 7 retries with backoff, 120 s timeouts); set these to override.
FIRST_CONTACT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def mlflow_errors() -> tuple[type[BaseException], ...]:
    """What a failing store raises (unreachable, unwritable, locked): caught around MLflow calls only."""
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [OSError, MlflowException]  # OSError: files, and requests' errors
    with contextlib.suppress(ImportError):
        from sqlalchemy.exc import SQLAlchemyError

        errors.append(SQLAlchemyError)
    return tuple(errors)


def first_line(err: BaseException, limit: int = 300) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def job_context() -> dict:
    """{'sweep_dir', 'job_num'} for a job of a sweep (Hydra in multirun mode), else {}."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra = HydraConfig.get()
    return {"sweep_dir": Path(str(hydra.sweep.dir)).absolute(), "job_num": hydra.job.num}


def default_uri(run_dir: Path, context: dict) -> str:
    """A SQLite store shared by a sweep's jobs (in the sweep dir), or the single run's own."""
    return f"sqlite:///{Path(context.get('sweep_dir') or run_dir).absolute() / layout.MLFLOW_DB}"


def param_text(value) -> str:
    text = json.dumps(value) if value is None or isinstance(value, (bool, list, dict)) else str(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."


def flat_params(cfg: dict, choices: dict) -> dict[str, str]:
    """The resolved config as dotted keys (the model's nodes that repeat a group's, e.g.
    model.resampler = resampler, once), and the config group choices as choice.<group>."""
    elsewhere = {json.dumps(v, sort_keys=True) for k, v in cfg.items() if k != "model"}
    elsewhere |= {json.dumps(v, sort_keys=True) for v in (cfg.get("backbone") or {}).values()}
    flat = {}

    def walk(node, key: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                if key == "model" and isinstance(v, dict) and json.dumps(v, sort_keys=True) in elsewhere:
                    continue
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = param_text(node)

    walk(cfg, "")
    flat |= {f"choice.{re.sub(r'[^0-9A-Za-z_./-]', '_', g)}": param_text(v) for g, v in choices.items()}
    return flat


def job_tags(cfg: dict, run_dir: Path, context: dict) -> dict[str, str]:
    git = git_state()
    tags = {"experiment": str(cfg["experiment"]["name"]), "run_dir": str(run_dir), "git_dirty": str(git["dirty"])}
    if git["sha"]:
        tags |= {"git_sha": git["sha"], "mlflow.source.git.commit": git["sha"]}
    if context:
        tags |= {"sweep_dir": str(context["sweep_dir"]), "job_num": str(context["job_num"])}
    return tags | {k.lower(): os.environ[k] for k in SLURM_TAGS if os.environ.get(k)}


def log_in_batches(client, run_id: str, params: dict | None = None, tags: dict | None = None) -> None:
    from mlflow.entities import Param, RunTag

    params = [Param(k, str(v)) for k, v in (params or {}).items()]
    tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for i in range(0, len(params), BATCH_LIMIT):
        client.log_batch(run_id, params=params[i : i + BATCH_LIMIT])
    for i in range(0, len(tags), BATCH_LIMIT):
        client.log_batch(run_id, tags=tags[i : i + BATCH_LIMIT])


def existing_run(client, run_id: str | None):
    """The run `run_id` if the store holds it (not deleted), else None."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise
    return run if run.info.lifecycle_stage != "deleted" else None


@contextlib.contextmanager
def first_contact(uri: str) -> Iterator[None]:
    """Around a job's first calls: one job at a time creates a SQLite store (a lock beside it), and a
    server that does not answer fails fast (FIRST_CONTACT_ENV, unless set)."""
    added = {k: v for k, v in FIRST_CONTACT_ENV.items() if k not in os.environ} if uri.startswith("http") else {}
    os.environ.update(added)
    try:
        if not uri.startswith("sqlite:///"):
            yield
            return
        import fcntl

        lock = Path(uri.removeprefix("sqlite:///").split("?")[0]).with_name(f".{layout.MLFLOW_DB}.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def experiment_named(client, name: str) -> str:
    """The id of the experiment `name`, created if need be (by this job or, at the same moment, another)."""
    from mlflow.exceptions import MlflowException

    for _ in range(2):
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    raise RuntimeError(f"mlflow experiment {name!r} was created, then not found")


class MlflowJob:
    """A job's parent run and its stages' child runs, their ids kept in <run dir>/mlflow_runs.json."""

    def __init__(self, client, uri: str, record: dict, record_path: Path) -> None:
        self.client, self.uri, self.record, self.record_path = client, uri, record, record_path
        self.parent = record["parent"]

    @classmethod
    def open(cls, cfg: dict, run_dir: Path, tracking_uri: str | None, experiment_name: str | None) -> MlflowJob:
        """Re-attach to the parent run that mlflow_runs.json names (a resumed run), else create it."""
        from mlflow import MlflowClient

        context = job_context()
        uri = tracking_uri or default_uri(run_dir, context)
        path = Path(run_dir) / layout.MLFLOW_RUNS
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        tags = job_tags(cfg, Path(run_dir), context)
        with first_contact(uri):
            client = MlflowClient(uri)
            parent = existing_run(client, record.get("parent")) if record.get("tracking_uri") == uri else None
            if parent is not None:
                client.update_run(record["parent"], status="RUNNING")
                log_in_batches(client, record["parent"], tags=tags)  # a requeued job's new SLURM ids
                if not parent.data.params:  # the first attempt stopped before logging them
                    log_in_batches(client, record["parent"], params=flat_params(cfg, group_choices()))
            else:
                name = experiment_name or (context["sweep_dir"].name if context else tags["experiment"])
                experiment_id = experiment_named(client, name)
                run_name = Path(run_dir).name if context else tags["experiment"]
                parent = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
                record = {"tracking_uri": uri, "experiment_id": experiment_id, "parent": parent, "stages": {}}
                write_json(path, record)
                log_in_batches(client, parent, params=flat_params(cfg, group_choices()))
        print(f"mlflow: run {record['parent']} in {uri}", flush=True)
        return cls(client, uri, record, path)

    def start_stage(self, name: str, counts: dict[str, int]) -> str:
        """The stage's child run (re-attached, else created), made the active run."""
        import mlflow

        child = self.record["stages"].get(name)
        if existing_run(self.client, child) is None:
            tags = {"mlflow.parentRunId": self.parent, "stage": name}
            child = self.client.create_run(self.record["experiment_id"], run_name=name, tags=tags).info.run_id
            self.record["stages"][name] = child
            write_json(self.record_path, self.record)
            log_in_batches(self.client, child, params=counts)
        mlflow.set_tracking_uri(self.uri)
        mlflow.start_run(run_id=child)
        return child


def log_job_metrics(run_dir: Path, numbers: dict[str, float]) -> None:
    """Numbers (e.g. the eval's, as test/CIDEr, test/image_gap) on the job's MLflow parent run,
    where it has one (mlflow_runs.json); a failure is one warning."""
    path = Path(run_dir) / layout.MLFLOW_RUNS
    if not numbers or not path.is_file() or not distributed.is_main_process():
        return
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    record = json.loads(path.read_text(encoding="utf-8"))
    now = int(time.time() * 1000)
    metrics = [Metric(re.sub(r"[^0-9A-Za-z_\-. :/]", "_", k), float(v), now, 0) for k, v in numbers.items()]
    try:
        with first_contact(record["tracking_uri"]):
            MlflowClient(record["tracking_uri"]).log_batch(record["parent"], metrics=metrics)
    except mlflow_errors() as err:
        log.warning("mlflow: the metrics were not logged to run %s: %s", record["parent"], first_line(err))
