"""One table over every job of a sweep (collect.py reads them): its overrides, status, exact
parameter counts and tokens per image, per stage the final loss and samples/s, and the eval
metrics of its last stage when it was evaluated. Written as summary.csv, summary.md and
summary.png (a metric against the swept parameter, one line per resampler type) into the sweep
directory. Failed, interrupted, never-started and missing jobs are listed with the reason.

Two kinds of spread are shown, since a difference between resamplers means something only when
it is larger than both: each eval number's bootstrap interval over the test panoramas (what another
test set could give), and, for a sweep over `seed`, the mean and standard deviation over the seeds
of jobs that differ in nothing else (what another training run could give).
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from vlm_resampler.runs import layout
from vlm_resampler.sweeps import dirs
from vlm_resampler.sweeps.against_best import Paired, best_section, csv_columns, evaluated_jobs, paired_with_best
from vlm_resampler.sweeps.collect import JobSummary, collect

TYPE_KEYS = ("resampler", "experiment")  # overrides that choose a resampler type (lines in the plot)
# Eval numbers shown in summary.md (all of them go to the CSV): captions, how much the answers
# depend on the image (nats), question-answering exact match overall and by kind.
EVAL_TABLE = ("CIDEr", "image_gap", "QA", "QA_colour", "QA_count", "QA_direction", "QA_size", "QA_pole")
PLOT_METRICS = ("CIDEr", "image_gap", "QA")  # summary.png's eval panels
SEED_KEY = "seed"  # jobs that differ only in it are runs of one setting


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


def table(jobs: list[JobSummary], paired: Paired) -> tuple[list[str], list[dict]]:
    """The CSV: one row per job, every number at full precision, with `paired`'s differences from
    the best job (against_best.paired_with_best)."""
    swept, _ = swept_keys(jobs)
    modules = [m for m in dict.fromkeys(k for j in jobs for k in j.parameters) if m != "total"]
    stages = stage_order(jobs)
    metrics = list(dict.fromkeys(k for j in jobs for k in j.eval))
    header = [
        "job",
        "dir",
        "status",
        *swept,
        "overrides",
        "resampler_type",
        "params_total",
        *[f"params_{m}" for m in modules],
        "tokens_per_image",
    ]
    for stage in stages:
        header += [f"{stage}_final_loss", f"{stage}_samples_per_s", f"{stage}_s_per_step", f"{stage}_steps"]
    bounded = [m for m in metrics if any(m in j.intervals for j in jobs)]
    header += [f"eval_{m}" for m in metrics]
    header += [f"eval_{m}_{end}" for m in bounded for end in ("low", "high")]
    best_columns, paired_values = csv_columns(paired)
    header += [*best_columns, "eval_dir", "reason"]
    rows = []
    for job in jobs:
        values = job_values(job)
        row = {
            "job": job.num,
            "dir": job.dir.name,
            "status": job.status,
            "overrides": " ".join(job.overrides),
            "resampler_type": job.resampler,
            "params_total": job.parameters.get("total"),
            "tokens_per_image": job.tokens_per_image,
            "eval_dir": job.eval_dir,
            "reason": "; ".join([job.reason, *job.notes]).strip("; "),
        }
        row |= {k: values.get(k) for k in swept}
        row |= {f"params_{m}": job.parameters.get(m) for m in modules}
        for stage in stages:
            numbers = job.stages.get(stage, {})
            row |= {
                f"{stage}_final_loss": numbers.get("final_loss"),
                f"{stage}_samples_per_s": numbers.get("samples_per_s"),
                f"{stage}_s_per_step": numbers.get("s_per_step"),
                f"{stage}_steps": numbers.get("steps"),
            }
        row |= {f"eval_{m}": job.eval.get(m) for m in metrics}
        for m in bounded:
            low, high = job.intervals.get(m, (None, None))
            row |= {f"eval_{m}_low": low, f"eval_{m}_high": high}
        row |= paired_values.get(job.dir.name, {})
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


def markdown(
    sweep_dir: Path,
    jobs: list[JobSummary],
    manifest: dict | None,
    alive: list[str],
    plot: str | None,
    paired: Paired,
) -> str:
    swept, common = swept_keys(jobs)
    stages = stage_order(jobs)
    metrics = [m for m in EVAL_TABLE if any(m in j.eval for j in jobs)]
    done = sum(j.finished for j in jobs)
    lines = [f"# Sweep {sweep_dir.name}", ""]
    if manifest:
        git = manifest.get("git") or {}
        dirty = " (uncommitted changes: git_diff.patch)" if git.get("dirty") else ""
        lines += [
            f"Submitted {manifest.get('submitted')} with launcher `{manifest.get('launcher')}` at git {str(git.get('sha'))[:12]}{dirty}; "
            f"every job composed from the sweep's conf/ snapshot.",
            "",
        ]
    lines += [f"{done} of {len(jobs)} job(s) done.", ""]
    if common:
        lines += ["Every job: `" + " ".join(common) + "`", ""]
    header = ["job", "status", *swept, "type", "params", "resampler params", "tokens/image"]
    header += [f"{s} loss" for s in stages] + [f"{s} s/step" for s in stages] + [f"eval {m}" for m in metrics]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job in jobs:
        values = job_values(job)
        cells = [
            job.dir.name,
            job.status,
            *[values.get(k) for k in swept],
            job.resampler,
            job.parameters.get("total"),
            job.parameters.get("resampler"),
            job.tokens_per_image,
        ]
        cells += [job.stages.get(s, {}).get("final_loss") for s in stages]
        cells += [job.stages.get(s, {}).get("s_per_step") for s in stages]
        lines.append("| " + " | ".join([*(_fmt(c) for c in cells), *(with_interval(job, m) for m in metrics)]) + " |")
    if any(j.intervals for j in jobs):
        lines += ["", "Eval numbers in [brackets]: 95% bootstrap intervals over the test panoramas (metrics.json)."]
    lines += seed_section(jobs, metrics)
    labels = {j.dir.name: [_fmt(job_values(j).get(k)) for k in swept] for j in evaluated_jobs(jobs)}
    lines += best_section(paired, swept, labels)
    unfinished = [j for j in jobs if not j.finished]
    if unfinished:
        lines += ["", "## Not done", ""]
        lines += [f"- `{j.dir.name}` ({' '.join(j.overrides)}): {j.reason}" for j in unfinished]
        lines += [
            "",
            f"`python launch/summarize.py --resume {sweep_dir}` submits these again, each into its own directory.",
        ]
    if alive:
        lines += ["", "Still in SLURM: " + ", ".join(alive)]
    notes = [(j, n) for j in jobs for n in j.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"- `{j.dir.name}`: {n}" for j, n in notes]
    lines += ["", "Parameter counts are exact (the model built on the meta device, as launch/inspect.py does)."]
    if plot:
        lines += ["", f"![metrics against the swept parameter]({plot})"]
    return "\n".join(lines) + "\n"


def with_interval(job: JobSummary, metric: str) -> str:
    bounds = job.intervals.get(metric)
    value = _fmt(job.eval.get(metric))
    return f"{value} [{_fmt(bounds[0])}, {_fmt(bounds[1])}]" if bounds and metric in job.eval else value


def seed_groups(jobs: list[JobSummary]) -> tuple[list[str], list[tuple[tuple, list[JobSummary]]]]:
    """(the swept keys other than seed, [(their values, the jobs with them)]) in first-job order."""
    others = [k for k in swept_keys(jobs)[0] if k != SEED_KEY]
    groups: dict[tuple, list[JobSummary]] = {}
    for job in jobs:
        values = job_values(job)
        groups.setdefault(tuple(values.get(k) for k in others), []).append(job)
    return others, list(groups.items())


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def seed_section(jobs: list[JobSummary], metrics: list[str]) -> list[str]:
    """summary.md's "Across seeds" table, for a sweep over seed: each setting's mean and standard
    deviation over the seeds its finished jobs ran."""
    if SEED_KEY not in swept_keys(jobs)[0]:
        return []
    others, groups = seed_groups(jobs)
    last = (stage_order(jobs) or [None])[-1]
    columns = [*(f"eval {m}" for m in metrics), *([f"{last} loss"] if last else [])]
    lines = [
        "",
        "## Across seeds",
        "",
        "Jobs that differ only in `seed`, over their finished jobs: mean ± standard deviation (n seeds).",
        "",
        "| " + " | ".join([*others, "seeds", *columns]) + " |",
        "|" + "---|" * (len(others) + 1 + len(columns)),
    ]
    for values, members in groups:
        done = [j for j in members if j.finished]
        numbers = [[j.eval.get(m) for j in done] for m in metrics]
        if last:
            numbers.append([j.stages.get(last, {}).get("final_loss") for j in done])
        cells = [_fmt(v) for v in values] + [", ".join(job_values(j).get(SEED_KEY, "?") for j in done) or "-"]
        for column in numbers:
            present = [v for v in column if v is not None]
            if not present:
                cells.append("-")
                continue
            mean, sd = mean_sd(present)
            cells.append(f"{mean:.4g} ± {sd:.2g} ({len(present)})" if sd is not None else f"{mean:.4g} (1)")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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
        if key in TYPE_KEYS or key == SEED_KEY:
            continue
        values = [job_values(j).get(key) for j in jobs]
        if all(_number(v) is not None for v in values if v is not None) and any(v is not None for v in values):
            return key
    return None


def line_label(job: JobSummary) -> str:
    values = job_values(job)
    return job.resampler or values.get("resampler") or values.get("experiment") or "default"


def setting_label(job: JobSummary, keys: list[str]) -> str:
    """A job's values of `keys` (the swept keys other than seed and type: the line it is on)."""
    values = job_values(job)
    return " ".join(f"{k}={values.get(k)}" for k in keys) or line_label(job)


def over_seeds(points: list[tuple]) -> tuple[list, list[float], list[float]]:
    """(x, mean, standard deviation) per distinct x of (x, y) points, in their order; sd 0 for one."""
    by_x: dict = {}
    for x, y in points:
        by_x.setdefault(x, []).append(y)
    spreads = [mean_sd(ys) for ys in by_x.values()]
    return list(by_x), [m for m, _ in spreads], [sd or 0.0 for _, sd in spreads]


def interval_bars(jobs: list[JobSummary], metric: str | None) -> list[list[float]] | None:
    """matplotlib's yerr ([below], [above]) from each job's interval of `metric` (0 where it has none)."""
    if metric is None or not any(metric in j.intervals for j in jobs):
        return None
    bounds = [j.intervals.get(metric, [j.eval[metric]] * 2) for j in jobs]
    return [
        [j.eval[metric] - b[0] for j, b in zip(jobs, bounds)],
        [b[1] - j.eval[metric] for j, b in zip(jobs, bounds)],
    ]


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
    panels = []  # (title, the job's number, the eval metric whose interval is the error bar)
    if last:
        panels += [
            (f"{last}: final loss", lambda j: j.stages.get(last, {}).get("final_loss"), None),
            (f"{last}: samples/s", lambda j: j.stages.get(last, {}).get("samples_per_s"), None),
        ]
    for metric in PLOT_METRICS:
        if any(metric in j.eval for j in jobs):
            panels.append((f"eval {metric}", lambda j, m=metric: j.eval.get(m), metric))
    if not panels or not any(f(j) is not None for _, f, _ in panels for j in jobs):
        return False
    axis = plot_axis(jobs)
    seeded = SEED_KEY in swept_keys(jobs)[0]
    keys = [k for k in seed_groups(jobs)[0] if k not in TYPE_KEYS]
    groups: dict[str, list[JobSummary]] = {}
    for job in jobs:
        groups.setdefault(line_label(job), []).append(job)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, value, metric) in zip(axes[0], panels):
        for label, members in groups.items():
            # over seeds, a setting's jobs share one x (their spread is the error bar)
            shown = [j for j in members if value(j) is not None and (not axis or job_values(j).get(axis) is not None)]
            if axis:
                shown.sort(key=lambda j: _number(job_values(j).get(axis)))
                xs = [_number(job_values(j).get(axis)) for j in shown]
            else:
                xs = [setting_label(j, keys) if seeded else j.dir.name for j in shown]
            if not shown:
                continue
            if seeded:
                xs, ys, bars = over_seeds(list(zip(xs, [value(j) for j in shown])))
            else:
                ys, bars = [value(j) for j in shown], interval_bars(shown, metric)
            ax.errorbar(xs, ys, yerr=bars, marker="o", capsize=3, label=label)
        spread = " (mean ± sd over seeds)" if seeded else (" (95% interval)" if metric else "")
        ax.set_title(title + spread)
        ax.set_xlabel(axis or ("setting" if seeded else "job"))
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
        raise FileNotFoundError(
            f"{sweep_dir}: no jobs (no {dirs.MANIFEST}, and no job directory with an overrides.yaml)"
        )
    paired = paired_with_best(jobs)
    header, rows = table(jobs, paired)
    with open(sweep_dir / dirs.SUMMARY_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    plotted = plot(sweep_dir / dirs.SUMMARY_PNG, jobs)
    (sweep_dir / dirs.SUMMARY_MD).write_text(
        markdown(sweep_dir, jobs, manifest, alive, dirs.SUMMARY_PNG if plotted else None, paired)
    )
    lines = [f"{sum(j.finished for j in jobs)} of {len(jobs)} job(s) done in {sweep_dir}"]
    lines += [f"  {j.dir.name}: {j.reason}" for j in jobs if not j.finished]
    written = [dirs.SUMMARY_CSV, dirs.SUMMARY_MD] + ([dirs.SUMMARY_PNG] if plotted else [])
    lines.append(f"wrote {', '.join(str(sweep_dir / w) for w in written)}")
    if not plotted:
        lines.append("(no summary.png: matplotlib is not installed, or no job has a number to plot yet)")
    return jobs, lines
