"""One table over every job of a sweep: its overrides, status, exact parameter counts and tokens
per image (inspection.py's meta-device build of the job's model), per stage the final loss and
samples/s (train_metrics.json), and the eval metrics of its last stage when it was evaluated.
Written as summary.csv, summary.md and summary.png (a metric against the swept parameter, one
line per resampler type) into the sweep directory. Failed, interrupted, never-started and
missing jobs are listed with the reason.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vlm_resampler.config.errors import ConfigError
from vlm_resampler.runs import layout
from vlm_resampler.sweeps import dirs, slurm
from vlm_resampler.sweeps.submit import read_manifest

TYPE_KEYS = ("resampler", "experiment")  # overrides that choose a resampler type (lines in the plot)
# Eval numbers shown in summary.md (all of them go to the CSV): captions, how much the answers
# depend on the image (nats), question-answering exact match overall and by kind.
EVAL_TABLE = ("CIDEr", "image_gap", "QA", "QA_colour", "QA_count", "QA_direction", "QA_size", "QA_pole")
PLOT_METRICS = ("CIDEr", "image_gap", "QA")  # summary.png's eval panels


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
    eval_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status == "done"


def _read_json(path: Path) -> dict | None:
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


def read_status(job: JobSummary, sweep_alive: list[str]) -> None:
    if not job.dir.is_dir():
        job.status, job.reason = "missing", "no job directory"
        return
    status = _read_json(job.dir / layout.STATUS)
    if status is None:
        job.status, job.reason = "missing", f"no {layout.STATUS} (not a job of this code's sweeps, or damaged)"
        return
    job.status = str(status.get("status"))
    meta = _read_json(job.dir / layout.RUN_META) or {}
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
        metrics = _read_json(job.dir / name / layout.TRAIN_METRICS)
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
        evals = sorted((job.dir / name / "eval").glob("*/metrics.json"), key=lambda p: (not p.parent.name.endswith("-test"), p))
        for path in evals:
            metrics = _read_json(path)
            if metrics and isinstance(metrics.get("model"), dict):
                job.eval = {k: v for k, v in metrics["model"].items() if isinstance(v, (int, float))}
                job.eval |= eval_extras(metrics)
                job.eval_dir = str(path.parent.relative_to(job.dir))
                return


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
    from vlm_resampler.inspection import inspect_source, source_from_dir
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
            read_status(job, alive)
            read_stages(job)
            read_eval(job)
            if counts:
                read_model(job, conf_dir if conf_dir.is_dir() else None)
            jobs.append(job)
    return jobs, manifest, alive


# ---------------------------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------------------------


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def swept_keys(jobs: list[JobSummary]) -> tuple[list[str], list[str]]:
    """(keys whose value differs between jobs, overrides every job shares)."""
    values: dict[str, set] = {}
    order: list[str] = []
    for job in jobs:
        for override in job.overrides:
            key, value = split_override(override)
            if key not in values:
                values[key] = set()
                order.append(key)
            values[key].add(value)
    present = {k: sum(any(split_override(o)[0] == k for o in j.overrides) for j in jobs) for k in order}
    swept = [k for k in order if len(values[k]) > 1 or present[k] != len(jobs)]
    common = [f"{k}={next(iter(values[k]))}" for k in order if k not in swept]
    return swept, common


def job_values(job: JobSummary) -> dict[str, str]:
    return dict(split_override(o) for o in job.overrides)


def stage_order(jobs: list[JobSummary]) -> list[str]:
    present = {s for j in jobs for s in j.stages}
    return [s for s in layout.STAGE_NAMES if s in present]


def table(jobs: list[JobSummary]) -> tuple[list[str], list[dict]]:
    """The CSV: one row per job, every number at full precision."""
    swept, _ = swept_keys(jobs)
    modules = [m for m in dict.fromkeys(k for j in jobs for k in j.parameters) if m != "total"]
    stages = stage_order(jobs)
    metrics = list(dict.fromkeys(k for j in jobs for k in j.eval))
    header = ["job", "dir", "status", *swept, "overrides", "resampler_type", "params_total", *[f"params_{m}" for m in modules], "tokens_per_image"]
    for stage in stages:
        header += [f"{stage}_final_loss", f"{stage}_samples_per_s", f"{stage}_s_per_step", f"{stage}_steps"]
    header += [f"eval_{m}" for m in metrics] + ["eval_dir", "reason"]
    rows = []
    for job in jobs:
        values = job_values(job)
        row = {"job": job.num, "dir": job.dir.name, "status": job.status, "overrides": " ".join(job.overrides),
               "resampler_type": job.resampler, "params_total": job.parameters.get("total"), "tokens_per_image": job.tokens_per_image,
               "eval_dir": job.eval_dir, "reason": "; ".join([job.reason, *job.notes]).strip("; ")}
        row |= {k: values.get(k) for k in swept}
        row |= {f"params_{m}": job.parameters.get(m) for m in modules}
        for stage in stages:
            numbers = job.stages.get(stage, {})
            row |= {f"{stage}_final_loss": numbers.get("final_loss"), f"{stage}_samples_per_s": numbers.get("samples_per_s"),
                    f"{stage}_s_per_step": numbers.get("s_per_step"), f"{stage}_steps": numbers.get("steps")}
        row |= {f"eval_{m}": job.eval.get(m) for m in metrics}
        rows.append(row)
    return header, rows


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown(sweep_dir: Path, jobs: list[JobSummary], manifest: dict | None, alive: list[str], plot: str | None) -> str:
    swept, common = swept_keys(jobs)
    stages = stage_order(jobs)
    metrics = [m for m in EVAL_TABLE if any(m in j.eval for j in jobs)]
    done = sum(j.finished for j in jobs)
    lines = [f"# Sweep {sweep_dir.name}", ""]
    if manifest:
        git = manifest.get("git") or {}
        dirty = " (uncommitted changes: git_diff.patch)" if git.get("dirty") else ""
        lines += [f"Submitted {manifest.get('submitted')} with launcher `{manifest.get('launcher')}` at git {str(git.get('sha'))[:12]}{dirty}; "
                  f"every job composed from the sweep's conf/ snapshot.", ""]
    lines += [f"{done} of {len(jobs)} job(s) done.", ""]
    if common:
        lines += ["Every job: `" + " ".join(common) + "`", ""]
    header = ["job", "status", *swept, "type", "params", "resampler params", "tokens/image"]
    header += [f"{s} loss" for s in stages] + [f"{s} s/step" for s in stages] + [f"eval {m}" for m in metrics]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job in jobs:
        values = job_values(job)
        cells = [job.dir.name, job.status, *[values.get(k) for k in swept], job.resampler, job.parameters.get("total"),
                 job.parameters.get("resampler"), job.tokens_per_image]
        cells += [job.stages.get(s, {}).get("final_loss") for s in stages]
        cells += [job.stages.get(s, {}).get("s_per_step") for s in stages]
        cells += [job.eval.get(m) for m in metrics]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    unfinished = [j for j in jobs if not j.finished]
    if unfinished:
        lines += ["", "## Not done", ""]
        lines += [f"- `{j.dir.name}` ({' '.join(j.overrides)}): {j.reason}" for j in unfinished]
        lines += ["", f"`python launch/summarize.py --resume {sweep_dir}` submits these again, each into its own directory."]
    if alive:
        lines += ["", "Still in SLURM: " + ", ".join(alive)]
    notes = [(j, n) for j in jobs for n in j.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"- `{j.dir.name}`: {n}" for j, n in notes]
    lines += ["", "Parameter counts are exact (the model built on the meta device, as launch/inspect.py does)."]
    if plot:
        lines += ["", f"![metrics against the swept parameter]({plot})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The plot.
# ---------------------------------------------------------------------------------------------


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def plot_axis(jobs: list[JobSummary]) -> str | None:
    """The swept parameter on the x axis: the first swept key (not a type choice) with numbers."""
    swept, _ = swept_keys(jobs)
    for key in swept:
        if key in TYPE_KEYS:
            continue
        values = [job_values(j).get(key) for j in jobs]
        if all(_number(v) is not None for v in values if v is not None) and any(v is not None for v in values):
            return key
    return None


def line_label(job: JobSummary) -> str:
    values = job_values(job)
    return job.resampler or values.get("resampler") or values.get("experiment") or "default"


def plot(path: Path, jobs: list[JobSummary]) -> bool:
    """summary.png, or False when matplotlib is missing or no job has a number to show."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    stages = stage_order(jobs)
    last = stages[-1] if stages else None
    panels = []
    if last:
        panels += [(f"{last}: final loss", lambda j: j.stages.get(last, {}).get("final_loss")),
                   (f"{last}: samples/s", lambda j: j.stages.get(last, {}).get("samples_per_s"))]
    for metric in PLOT_METRICS:
        if any(metric in j.eval for j in jobs):
            panels.append((f"eval {metric}", lambda j, m=metric: j.eval.get(m)))
    if not panels or not any(f(j) is not None for _, f in panels for j in jobs):
        return False
    axis = plot_axis(jobs)
    groups: dict[str, list[JobSummary]] = {}
    for job in jobs:
        groups.setdefault(line_label(job), []).append(job)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, value) in zip(axes[0], panels):
        for label, members in groups.items():
            if axis:
                points = sorted((_number(job_values(j).get(axis)), value(j)) for j in members if value(j) is not None and job_values(j).get(axis) is not None)
            else:
                points = [(j.dir.name, value(j)) for j in members if value(j) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel(axis or "job")
        if not axis:
            ax.tick_params(axis="x", rotation=45)
        ax.grid(alpha=0.3)
    axes[0][0].legend(title="resampler")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------


def write_summary(sweep_dir: Path, counts: bool = True) -> tuple[list[JobSummary], list[str]]:
    """Write summary.csv, summary.md and summary.png; returns the jobs and the lines to print."""
    sweep_dir = Path(sweep_dir)
    jobs, manifest, alive = collect(sweep_dir, counts=counts)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no jobs (no {dirs.MANIFEST}, and no job directory with an overrides.yaml)")
    header, rows = table(jobs)
    with open(sweep_dir / dirs.SUMMARY_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    plotted = plot(sweep_dir / dirs.SUMMARY_PNG, jobs)
    (sweep_dir / dirs.SUMMARY_MD).write_text(markdown(sweep_dir, jobs, manifest, alive, dirs.SUMMARY_PNG if plotted else None))
    lines = [f"{sum(j.finished for j in jobs)} of {len(jobs)} job(s) done in {sweep_dir}"]
    lines += [f"  {j.dir.name}: {j.reason}" for j in jobs if not j.finished]
    written = [dirs.SUMMARY_CSV, dirs.SUMMARY_MD] + ([dirs.SUMMARY_PNG] if plotted else [])
    lines.append(f"wrote {', '.join(str(sweep_dir / w) for w in written)}")
    if not plotted:
        lines.append("(no summary.png: matplotlib is not installed, or no job has a number to plot yet)")
    return jobs, lines
