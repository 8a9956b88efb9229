#!/usr/bin/env python
"""One table over every job of a sweep (launch/train.py -m): overrides, status, exact parameter
counts, tokens per image, samples/s and final loss per stage, eval metrics if evaluated; written
as summary.csv, summary.md and summary.png into the sweep directory. Failed and missing jobs are
listed with the reason.

    python launch/summarize.py multirun/SWEEP
    python launch/summarize.py --resume multirun/SWEEP             # submit the unfinished jobs again
    python launch/summarize.py --resume multirun/SWEEP hydra.launcher.timeout_min=600
    python launch/summarize.py multirun/search-perceiver_tokens    # an Optuna study: trials, best, plots, report.html

Exit status: 0 when every job (every trial of a study) is done, 1 when some are not (the summary is written either way),
2 when the directory is not a sweep or cannot be resumed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # counts come from local configs only; nothing is downloaded


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch/summarize.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory (multirun/<sweep>)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="with --resume: launcher settings for the resubmitted jobs (hydra.launcher.KEY=VALUE)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="submit every job that is not done again, into its own directory, then summarize",
    )
    parser.add_argument("--no-counts", action="store_true", help="skip the parameter counts (no model is built)")
    args = parser.parse_intermixed_args(argv)  # `DIR --resume hydra.launcher.KEY=VALUE` as typed
    if args.overrides and not args.resume:
        parser.error("overrides are for --resume only")
    bad = [o for o in args.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    if bad:
        parser.error(
            f"{' '.join(bad)}: a resumed job runs exactly what was submitted; only launcher settings (hydra.*) may change"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    from vlm_resampler.sweeps.summarize import write_summary

    args = parse_args(sys.argv[1:] if argv is None else argv)
    sweep_dir = args.sweep_dir
    if not sweep_dir.is_dir():
        print(f"error: {sweep_dir}: no such directory", file=sys.stderr)
        return 2
    from vlm_resampler.sweeps.submit import read_manifest

    manifest = read_manifest(sweep_dir) or {}
    study = manifest.get("kind") == "study"
    if study and args.resume:
        command = " ".join(["python", *manifest["command"]])
        print(f"error: {sweep_dir} is an Optuna study: its own command continues it: {command}", file=sys.stderr)
        return 2
    try:
        jobs, lines = write_summary(sweep_dir, counts=not args.no_counts)
    except FileNotFoundError as err:
        if not study:
            print(f"error: {err}", file=sys.stderr)
            return 2
        jobs, lines = [], [f"{sweep_dir}: no trial has run a job yet"]
    if study:
        from vlm_resampler.sweeps.study_report import write_study_report

        trials_complete, study_lines = write_study_report(sweep_dir, manifest)
        lines += study_lines
    if args.resume:
        from hydra_plugins.vlm_resampler_slurm import register as register_slurm_launcher
        from vlm_resampler.sweeps.resume import ResumeError, resume_sweep

        register_slurm_launcher()  # a sweep's conf/ snapshot names it under hydra/launcher=slurm

        try:
            submitted, problems = resume_sweep(sweep_dir, jobs, args.overrides)
        except ResumeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not submitted:
            print(f"every job of {sweep_dir} is done: nothing to resume")
        for problem in problems:
            print(f"resumed job failed: {problem}", file=sys.stderr)
        jobs, lines = write_summary(sweep_dir, counts=not args.no_counts)
    print("\n".join(lines))
    return 0 if all(j.finished for j in jobs) and (not study or trials_complete) else 1


if __name__ == "__main__":
    from vlm_resampler.errors import short_errors

    with short_errors("summarize"):
        sys.exit(main())
