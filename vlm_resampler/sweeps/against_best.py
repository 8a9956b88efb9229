"""summary.md's "Against the best" table: each evaluated job of a sweep minus the best job, per
metric, paired over the same eval panoramas (evaluation/compare.py, as launch/compare.py does).
Two jobs' own intervals can overlap while every panorama favours one of them; this says which
jobs the eval set really ranks, and names those it cannot tell from the best."""

from __future__ import annotations

from vlm_resampler.evaluation.compare import against_best, cells_against_best
from vlm_resampler.sweeps.collect import JobSummary

METRICS = ("CIDEr", "image_gap", "QA")  # higher is better for each


Paired = tuple[dict[str, str], dict[str, dict]]


def evaluated_jobs(jobs: list[JobSummary]) -> list[JobSummary]:
    """The jobs that are paired with the best: finished, with an eval."""
    return [j for j in jobs if j.finished and j.eval_dir]


def paired_with_best(jobs: list[JobSummary]) -> Paired:
    """(metric -> the best evaluated job's directory name, metric -> job directory name ->
    against_best()'s numbers for it, or why it was not paired), for the metrics of METRICS that
    more than one job was scored on."""
    evaluated = {j.dir.name: j for j in evaluated_jobs(jobs)}
    best = {}
    for metric in METRICS:
        scored = [(job.eval[metric], name) for name, job in evaluated.items() if metric in job.eval]
        if len(scored) > 1:
            best[metric] = max(scored, key=lambda s: s[0])[1]
    if not best:
        return {}, {}
    return best, against_best({name: job.dir / job.eval_dir for name, job in evaluated.items()}, best)


def csv_columns(paired: Paired) -> tuple[list[str], dict[str, dict]]:
    """summary.csv's share: per metric `<metric>_minus_best` with its `_low` and `_high` ends, and
    each job's values of them (0 for the best; none for a job not paired)."""
    best, differences = paired
    header = [f"{metric}_minus_best{end}" for metric in best for end in ("", "_low", "_high")]
    values: dict[str, dict] = {}
    for metric, best_name in best.items():
        names = {best_name: (0.0, (0.0, 0.0))}
        names |= {
            name: (n["A_minus_B"], n["interval"]) for name, n in differences[metric].items() if isinstance(n, dict)
        }
        for name, (difference, (low, high)) in names.items():
            values.setdefault(name, {}).update(
                {f"{metric}_minus_best": difference, f"{metric}_minus_best_low": low, f"{metric}_minus_best_high": high}
            )
    return header, values


def best_section(paired: Paired, keys: list[str], labels: dict[str, list[str]]) -> list[str]:
    """summary.md's "Against the best" lines; `keys` name the columns that tell the jobs apart
    (the swept keys) and `labels` holds each evaluated job's values of them, by job directory name, in
    the order of the table."""
    best, differences = paired
    if not best:
        return []
    reasons = [n for rows in differences.values() for n in rows.values()]
    if all(isinstance(n, str) for n in reasons):
        return ["", f"No job paired with the best: {reasons[0]}."]
    header = ["job", *keys, *(f"{m} - best [95%]" for m in best)]
    lines = [
        "",
        "## Against the best",
        "",
        "Each evaluated job's number minus the best job's, paired over the same eval panoramas (as launch/compare.py "
        "does): an interval that holds 0 cannot tell the two apart on this eval set. The spread between training "
        "runs, which a sweep over seed shows, comes on top.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    tables = {metric: cells_against_best(differences[metric], best_name) for metric, best_name in best.items()}
    for name in labels:
        lines.append("| " + " | ".join([name, *labels[name], *(tables[m][0][name] for m in best)]) + " |")
    lines.append("")
    unpaired: dict[str, str] = {}
    for metric, (_, tied, why_not) in tables.items():
        told = (
            f"cannot tell {', '.join(f'`{t}`' for t in tied)} from it" if tied else "sets it apart from each job paired"
        )
        lines.append(f"- {metric}: best `{best[metric]}`; the eval set {told}")
        for name, why in why_not.items():
            unpaired.setdefault(name, why)
    lines += [f"- `{name}` not paired with the best: {why}" for name, why in unpaired.items()]
    return lines
