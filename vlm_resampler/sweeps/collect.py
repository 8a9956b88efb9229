"""What a sweep directory says about each of its jobs: overrides, status (with what SLURM still
knows), per-stage training numbers, eval metrics, and exact parameter counts from a meta-device
build. Read by summarize.py (the table and plot) and resume.py (which jobs to submit again)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vlm_resampler.errors import ConfigError
from vlm_resampler.runs import layout
from vlm_resampler.sweeps import dirs, slurm
from vlm_resampler.sweeps.submit import read_manifest


@dataclass
class JobSummary:
    num: int
    dir: Path
    overrides: list[str]
    status: str = "missing"  # done | failed | interrupted | running | queued | missing
    reason: str = ""
    resampler: str | None = None
    parameters: dict[str, int] = field(default_factory=dict)
    tokens_per_image: int | None = None
    stages: dict[str, dict] = field(default_factory=dict)  # name -> final_loss, samples_per_s, steps
    eval: dict[str, float] = field(default_factory=dict)
    # metric -> [low, high]: its bootstrap interval over the test panoramas (evaluation/intervals.py)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    eval_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status == "done"


def read_json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _overrides_of(job_dir: Path) -> list[str] | None:
    for path in (job_dir / dirs.OVERRIDES, job_dir / ".hydra" / "overrides.yaml"):
        if path.is_file():
            return [str(o) for o in OmegaConf.load(path)]
    return None


def listed_jobs(sweep_dir: Path, manifest: dict | None) -> list[tuple[int, Path, list[str]]]:
    """(num, dir, overrides) of every job: from sweep.json, or (a sweep made without it) from the
    job directories Hydra wrote."""
    if manifest is not None:
        return [(j["num"], sweep_dir / j["dir"], list(j["overrides"])) for j in manifest["jobs"]]
    found = []
    for path in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        overrides = _overrides_of(path)
        match = dirs.JOB_DIR.match(path.name)
        if overrides is not None and (match or path.name.isdigit()):
            found.append((int(match.group(1)) if match else int(path.name), path, overrides))
    return sorted(found, key=lambda j: j[0])


# ---------------------------------------------------------------------------------------------
# One job.
# ---------------------------------------------------------------------------------------------


def judge_status(job: JobSummary, sweep_alive: list[str]) -> None:
    """The job's status and, unless done, why, in words (a damaged status.json is a state here, not an error)."""
    if not job.dir.is_dir():
        job.status, job.reason = "missing", "no job directory"
        return
    status = read_json_or_none(job.dir / layout.STATUS)
    if status is None:
        job.status, job.reason = "missing", f"no {layout.STATUS} (not a job of this code's sweeps, or damaged)"
        return
    job.status = str(status.get("status"))
    meta = read_json_or_none(job.dir / layout.RUN_META) or {}
    slurm_id = slurm.job_id_of(meta)
    if job.status == "failed":
        where = f" in {status['step']}" if status.get("step") else ""
        trace = f" (traceback: {job.dir.name}/{status['traceback']})" if status.get("traceback") else ""
        job.reason = f"failed{where}: {status.get('error', 'no error recorded')}{trace}"
    elif job.status == "interrupted":
        job.reason = f"interrupted: {status.get('reason', '')} (resumes from its checkpoints)"
    elif job.status in ("queued", "running"):
        if sweep_alive:
            job.reason = f"{job.status}: the sweep still has jobs in SLURM"
            if slurm_id:
                state = slurm.job_state(slurm_id)
                if state and state.split()[0] not in slurm.ALIVE_STATES:
                    job.reason = f"{job.status} when its SLURM job {slurm_id} ended: {state}"
        elif job.status == "queued":
            job.reason = "never started (cancelled, or the submission ended before it ran)"
        else:
            state = slurm.job_state(slurm_id) if slurm_id else None
            ended = f"its SLURM job {slurm_id} ended: {state}" if state else "no process reported its end"
            job.reason = f"stopped while running ({ended}): killed, cancelled or out of time"
    elif job.status != "done":
        job.reason = f"status {job.status!r}"


def read_stages(job: JobSummary) -> None:
    for name in layout.STAGE_NAMES:
        metrics = read_json_or_none(job.dir / name / layout.TRAIN_METRICS)
        if metrics is None:
            continue
        trainer = metrics.get("metrics") or {}
        runtime, steps = trainer.get("train_runtime"), metrics.get("steps")
        job.stages[name] = {
            "final_loss": metrics.get("final_loss"),
            "samples_per_s": trainer.get("train_samples_per_second"),
            "s_per_step": runtime / steps if isinstance(runtime, (int, float)) and steps else None,
            "steps": steps,
        }


def read_eval(job: JobSummary) -> None:
    """The model's scores in the last stage that was evaluated (a *-test eval first)."""
    for name in reversed(layout.STAGE_NAMES):
        evals = sorted(
            (job.dir / name / "eval").glob("*/metrics.json"), key=lambda p: (not p.parent.name.endswith("-test"), p)
        )
        for path in evals:
            metrics = read_json_or_none(path)
            if metrics and isinstance(metrics.get("model"), dict):
                job.eval = eval_numbers(metrics)
                job.intervals = dict((metrics.get("intervals") or {}).get("bounds") or {})
                job.eval_dir = str(path.parent.relative_to(job.dir))
                return


def eval_numbers(metrics: dict) -> dict[str, float]:
    """The numbers of one metrics.json by the names tables, plots and `optimized_metric` use."""
    numbers = {k: v for k, v in (metrics.get("model") or {}).items() if isinstance(v, (int, float))}
    return numbers | eval_extras(metrics)


class ObjectiveMissing(RuntimeError):
    """The job finished, but its eval does not hold the optimized metric."""


def final_stage(job_dir: Path) -> str | None:
    """The last stage a finished job completed (its status.json), or None while it is not done."""
    status = read_json_or_none(Path(job_dir) / layout.STATUS) or {}
    completed = status.get("completed") or []
    return completed[-1] if status.get("status") == layout.DONE and completed else None


def objective_eval_dir(stage_dir: Path, optimized_metric: str) -> Path:
    """The eval of `stage_dir` on the split of `optimized_metric` ("<split>/<name>"):
    <stage_dir>/eval/<dataset>-<split>/."""
    split = optimized_metric.partition("/")[0]
    found = sorted((Path(stage_dir) / "eval").glob(f"*-{split}/metrics.json"))
    if not found:
        raise ObjectiveMissing(
            f"optimized_metric={optimized_metric}: no eval of the {split} split in {Path(stage_dir) / 'eval'} "
            f"(a study's jobs need eval_after=true and eval_args=[split={split}])"
        )
    return found[0].parent


def objective_value(stage_dir: Path, optimized_metric: str) -> float:
    """`optimized_metric` ("<split>/<name>", e.g. val/CIDEr or val/image_gap) from the eval of
    `stage_dir` on that split (<stage_dir>/eval/<dataset>-<split>/metrics.json)."""
    name = optimized_metric.partition("/")[2]
    found = objective_eval_dir(stage_dir, optimized_metric) / "metrics.json"
    numbers = eval_numbers(read_json_or_none(found) or {})
    if name not in numbers:
        raise ObjectiveMissing(
            f"optimized_metric={optimized_metric}: {found} has no {name!r}; it has {', '.join(sorted(numbers))}"
        )
    return float(numbers[name])


def eval_extras(metrics: dict) -> dict[str, float]:
    """The image-shuffle loss gap and the question-answering exact match (overall, by kind), where
    the eval measured them."""
    extras = {}
    gap = (metrics.get("image_dependence") or {}).get("gap")
    if isinstance(gap, (int, float)):
        extras["image_gap"] = gap
    qa = metrics.get("qa") or {}
    if isinstance(qa.get("exact_match"), (int, float)):
        extras["QA"] = qa["exact_match"]
    for kind, numbers in (qa.get("by_kind") or {}).items():
        if isinstance(numbers, dict) and isinstance(numbers.get("exact_match"), (int, float)):
            extras[f"QA_{kind}"] = numbers["exact_match"]
    return extras


def compose_from(conf_dir: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def read_model(job: JobSummary, conf_dir: Path | None) -> None:
    """Exact counts from the job's resolved_config.yaml, or (a job that never ran) from its
    overrides composed with the sweep's conf/ snapshot."""
    from vlm_resampler.inspection.counts import inspect_source
    from vlm_resampler.inspection.sources import source_from_dir
    from vlm_resampler.sweeps.check import model_report

    try:
        if (job.dir / layout.RESOLVED_CONFIG).is_file():
            report = inspect_source(source_from_dir(job.dir))
        elif conf_dir is not None and conf_dir.is_dir():
            report = model_report(compose_from(conf_dir, job.overrides))
        else:
            job.notes.append("parameter counts unknown: no resolved_config.yaml and no conf/ snapshot")
            return
    except (ConfigError, ValueError, OSError) as err:
        job.notes.append(f"parameter counts unavailable: {err}")
        return
    except Exception as err:  # a composition error of an old sweep: noted, not fatal
        job.notes.append(f"parameter counts unavailable: {type(err).__name__}: {err}")
        return
    job.resampler = report["resampler_type"]
    job.parameters = dict(report["parameters"])
    job.tokens_per_image = report["tokens"]["tokens_per_image"]


def collect(sweep_dir: Path, counts: bool = True) -> tuple[list[JobSummary], dict | None, list[str]]:
    """Every job of the sweep, and the SLURM jobs of the sweep that are still alive."""
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    conf_dir = sweep_dir / dirs.CONF_SNAPSHOT
    alive = slurm.alive_jobs(sweep_dir)
    jobs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for num, job_dir, overrides in listed_jobs(sweep_dir, manifest):
            job = JobSummary(num=num, dir=job_dir, overrides=overrides)
            judge_status(job, alive)
            read_stages(job)
            read_eval(job)
            if counts:
                read_model(job, conf_dir if conf_dir.is_dir() else None)
            jobs.append(job)
    return jobs, manifest, alive
