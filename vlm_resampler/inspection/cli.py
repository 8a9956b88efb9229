"""launch/inspect.py's command line: sources from arguments, `--compare`, `--json`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from vlm_resampler.errors import ConfigError
from vlm_resampler.inspection.counts import inspect_source
from vlm_resampler.inspection.report import render
from vlm_resampler.inspection.sources import source_from_args

# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------

USAGE_EXAMPLES = """examples:
  python launch/inspect.py                                   # the default config
  python launch/inspect.py resampler=bimamba resampler.hidden_dim=1024
  python launch/inspect.py runs/NAME                         # what a run built (its resolved_config.yaml)
  python launch/inspect.py runs/NAME/finetune                # one stage (its checkpoint_metadata.json)
  python launch/inspect.py --compare "resampler=bimamba resampler.expand=1.75" "resampler=mlp"
  python launch/inspect.py backbone=tiny --compare resampler=mlp resampler=bimamba  # shared overrides first
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch/inspect.py",
        description="Exact parameter counts, trainable sets per stage and token counts of a config or "
        "a run, built on the meta device (nothing is trained, loaded or downloaded).",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", nargs="*", help="Hydra overrides (key=value), or one run or stage directory")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="CONFIG",
        help="several configs side by side, each one quoted string of overrides (or a directory); "
        "overrides given before --compare apply to all of them",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (a list with --compare)")
    parser.add_argument(
        "--gpu-mem",
        type=float,
        metavar="GIB",
        help="plan memory for a GPU of this many GiB: whether each stage fits, and the largest batch that does",
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="N", help="the memory plan's batch per process (default: each stage's own)"
    )
    # intermixed: `inspect.py backbone=X --gpu-mem 80 precision=bf16` reads as it would for train.py
    args = parser.parse_intermixed_args(argv)
    if args.gpu_mem is not None and not args.gpu_mem > 0:
        parser.error(f"--gpu-mem {args.gpu_mem}: expected a positive number of GiB")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: expected an integer >= 1")
    if any(a in ("-m", "--multirun") for a in args.target):
        parser.error("inspect shows one config; use --compare for several")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.compare:
        jobs = [(args.target + shlex.split(item), item) for item in args.compare]
    else:
        jobs = [(args.target, None)]
    reports, failures = [], []
    for overrides, label in jobs:
        try:
            reports.append(inspect_source(source_from_args(overrides, label), args.gpu_mem, args.batch_size))
        except ConfigError as err:
            failures.append((label, str(err)))
    if failures:
        print(f"error: {len(failures)} of {len(jobs)} config(s) cannot be inspected.", file=sys.stderr)
        for label, message in failures:
            print(f"  {f'[{label}] ' if args.compare else ''}{message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reports if args.compare else reports[0], indent=2))
    else:
        print(render(reports))
    return 0
