"""summary.md's "Against the best" table: each evaluated job of a sweep minus the best job, per
metric, paired over the same eval panoramas (evaluation/compare.py, as launch/compare.py does).
Two jobs' own intervals can overlap while every panorama favours one of them; this says which
jobs the eval set really ranks, and names those it cannot tell from the best."""

from __future__ import annotations

from vlm_resampler.evaluation.compare import against_best, cells_against_best
from vlm_resampler.sweeps.collect import JobSummary

METRICS = ("CIDEr", "image_gap", "QA")  # higher is better for each


def best_section(jobs: list[JobSummary], keys: list[str], labels: dict[str, list[str]]) -> list[str]:
    """summary.md's "Against the best" lines; `keys` name the columns that tell the jobs apart
    (the swept keys) and `labels` holds each job's values of them, by job directory name."""
    evaluated = {j.dir.name: j for j in jobs if j.finished and j.eval_dir}
    best = {}
    for metric in METRICS:
        scored = [(job.eval[metric], name) for name, job in evaluated.items() if metric in job.eval]
        if len(scored) > 1:
            best[metric] = max(scored, key=lambda s: s[0])[1]
    if not best:
        return []
    differences = against_best({name: job.dir / job.eval_dir for name, job in evaluated.items()}, best)
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
    for name in evaluated:
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
