"""What launch/summarize.py adds for a study directory (hydra/sweeper=optuna): the trial table
(parameters, objective, state, why a trial failed), the best trial and its run directory, and
Optuna's own plots (optimization history, parameter importances, slice) as PNGs, in summary.md
and a self-contained report.html beside it."""

from __future__ import annotations

import html
import warnings
from pathlib import Path

from vlm_resampler.sweeps.study import FAILURE, JOB_DIR, SAME_AS, storage_url

PLOTS = {
    "study_history.png": "plot_optimization_history",
    "study_importances.png": "plot_param_importances",
    "study_slice.png": "plot_slice",
}
REPORT = "report.html"


def load_study(sweep_dir: Path, manifest: dict):
    import optuna

    info = manifest.get("study") or {}
    url = storage_url(sweep_dir, info.get("storage"))
    names = optuna.get_all_study_names(storage=url)
    name = info.get("study_name") if info.get("study_name") in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise FileNotFoundError(f"{sweep_dir}: no single study in {url} (studies: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=name, storage=url)


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def trial_rows(study) -> tuple[list[str], list[dict]]:
    keys = sorted({key for trial in study.trials for key in trial.params})
    metric = study.user_attrs.get("optimized_metric", "value")
    header = ["trial", "state", metric, *keys, "job dir", "note"]
    rows = []
    for trial in study.trials:
        note = trial.user_attrs.get(FAILURE, "")
        if SAME_AS in trial.user_attrs:
            note = f"same config as trial {trial.user_attrs[SAME_AS]}" + (f"; {note}" if note else "")
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                metric: "" if trial.value is None else f"{trial.value:.4g}",
                **{key: _short(trial.params.get(key, "")) for key in keys},
                "job dir": trial.user_attrs.get(JOB_DIR, ""),
                "note": note,
            }
        )
    return header, rows


def best_line(study, sweep_dir: Path) -> str:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return "no trial has completed yet"
    best = study.best_trial
    metric = study.user_attrs.get("optimized_metric", "value")
    params = ", ".join(f"{k}={v}" for k, v in sorted(best.params.items()))
    return f"best: trial {best.number}, {metric} = {best.value:.4g} ({params}), run dir {sweep_dir / best.user_attrs.get(JOB_DIR, '?')}"


def paired_with_best(study, sweep_dir: Path) -> tuple[dict[int, str], list[str]]:
    """Each completed trial's objective minus the best trial's, paired over the panoramas of the
    split it is measured on (evaluation/compare.py): (trial number -> its cell in the trial table,
    the lines saying which trials that split cannot tell from the best). A study's best is the
    maximum of a noisy number, so the trials within its noise are as good a choice."""
    from optuna.trial import TrialState

    from vlm_resampler.evaluation.compare import against_best, cells_against_best
    from vlm_resampler.sweeps.collect import ObjectiveMissing, final_stage, objective_eval_dir

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    metric = str(study.user_attrs.get("optimized_metric", ""))
    if len(complete) < 2 or "/" not in metric:
        return {}, []
    # Keyed by job directory: a trial that reused another's config (SAME_AS) shares its job and eval.
    eval_dirs, unpaired = {}, {}
    for trial in complete:
        job = trial.user_attrs.get(JOB_DIR, "")
        stage = final_stage(sweep_dir / job) if job else None
        if stage is None:
            unpaired[job] = f"no finished job directory {job!r}"
            continue
        try:
            eval_dirs[job] = objective_eval_dir(sweep_dir / job / stage, metric)
        except ObjectiveMissing as err:
            unpaired[job] = str(err)
    best_job = study.best_trial.user_attrs.get(JOB_DIR, "")
    if best_job not in eval_dirs:
        return {}, [f"no paired differences: the best trial's eval is missing ({unpaired.get(best_job, best_job)})"]
    name = metric.partition("/")[2]
    differences = against_best(eval_dirs, {name: best_job})[name] | unpaired
    job_cells, tied_jobs, why_not = cells_against_best(differences, best_job)
    cells, tied, reasons = {}, [], {}
    for trial in complete:
        job = trial.user_attrs.get(JOB_DIR, "")
        cells[trial.number] = job_cells[job]
        if job in tied_jobs:
            tied.append(trial.number)
        if job in why_not:
            reasons.setdefault(why_not[job], []).append(trial.number)
    paired = [d for d in differences.values() if isinstance(d, dict)]
    lines = []
    if paired:
        split = f"the {paired[0]['panoramas']} {metric.partition('/')[0]} panoramas"
        if tied:
            lines.append(
                f"on {split}, trial(s) {', '.join(map(str, tied))} cannot be told from the best (the 95% interval "
                f"of the paired difference holds 0): as good a choice, or a reason to evaluate on more panoramas"
            )
        else:
            lines.append(f"on {split}, the best is apart from every other completed trial (no 95% interval holds 0)")
    lines += [f"trial(s) {', '.join(map(str, t))} not paired with the best: {why}" for why, t in reasons.items()]
    return cells, lines


def write_plots(study, sweep_dir: Path) -> list[str]:
    """Optuna's matplotlib plots of the completed trials; a plot Optuna cannot draw yet (e.g.
    importances before two trials completed) is left out, with its reason printed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every plot function
                axes = getattr(optuna_plots, function)(study)
        except (ValueError, RuntimeError) as err:
            print(f"study: no {name}: {err}")
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        first.figure.savefig(sweep_dir / name, bbox_inches="tight", dpi=110)
        plt.close(first.figure)
        written.append(name)
    return written


def markdown(
    header: list[str], rows: list[dict], best: str, paired: list[str], plots: list[str], metric: str, direction: str
) -> str:
    lines = ["", "## Study", "", f"objective: {metric} ({direction}); {best}", ""]
    lines += [f"{line}." for line in paired] + ([""] if paired else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    lines += [""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def report_html(
    sweep_dir: Path, header, rows, best: str, paired: list[str], plots: list[str], summary_png: bool
) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row[h]))}</td>" for h in header) + "</tr>" for row in rows)
    images = "".join(
        f'<figure><img src="{name}" alt="{name}"><figcaption>{name}</figcaption></figure>' for name in plots
    )
    if summary_png:
        images += '<figure><img src="summary.png" alt="summary.png"><figcaption>every job</figcaption></figure>'
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left}img{max-width:48em}figure{display:inline-block;margin:1em}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>study {html.escape(sweep_dir.name)}</title>"
        f"<style>{style}</style></head><body><h1>Study {html.escape(str(sweep_dir))}</h1>"
        f"<p>{html.escape(best)}</p>{''.join(f'<p>{html.escape(line)}.</p>' for line in paired)}<table><tr>{cells}</tr>{body}</table>{images}</body></html>\n"
    )


def write_study_report(sweep_dir: Path, manifest: dict) -> tuple[bool, list[str]]:
    """Append the study section to summary.md, write the plots and report.html. Returns whether
    every trial completed, and the lines to print."""
    from optuna.trial import TrialState

    from vlm_resampler.runs.atomic import write_text
    from vlm_resampler.sweeps import dirs

    study = load_study(sweep_dir, manifest)
    header, rows = trial_rows(study)
    best = best_line(study, sweep_dir)
    cells, paired = paired_with_best(study, sweep_dir)
    if cells:
        column = f"{header[2]} - best [95%]"
        header.insert(3, column)
        for row in rows:
            row[column] = cells.get(row["trial"], "")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = write_plots(study, sweep_dir) if complete else []
    metric = study.user_attrs.get("optimized_metric", "value")
    summary = sweep_dir / dirs.SUMMARY_MD
    text = summary.read_text() if summary.is_file() else f"# Study {sweep_dir}\n"
    write_text(summary, text + markdown(header, rows, best, paired, plots, metric, study.direction.name.lower()))
    has_png = (sweep_dir / dirs.SUMMARY_PNG).is_file()
    write_text(sweep_dir / REPORT, report_html(sweep_dir, header, rows, best, paired, plots, has_png))
    states = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    lines = [
        f"study {study.study_name}: {len(rows)} trial(s) ({counts}); {best}",
        *paired,
        f"wrote {sweep_dir / REPORT}",
    ]
    return len(complete) == len(rows) > 0, lines
