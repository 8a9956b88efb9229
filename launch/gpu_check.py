#!/usr/bin/env python
"""The GPU checks as one prepared command (under 8 minutes on one lent GPU), writing a JSON report:
three stages of debug=smoke in bf16 and their eval, a real-size resampler step (seconds, tokens/s,
model FLOPs utilisation, peak memory against inspect's plan), our selective scan against the
reference (values and gradients), and mamba-ssm's kernel against ours where it is installed.
Without a GPU the same parts run on the CPU, smaller.

    python launch/gpu_check.py                          # writes gpu_check.json
    python launch/gpu_check.py --out $OUT/gpu_check.json --quick
    python launch/gpu_check.py --parts scan,mamba_ssm      # only these (the device is always described)

On a lent GPU machine, `.ci/gpu-check` runs it with what `.ci/gpu-kit` packed for that machine.

Exit status 0 when every part passed. The logic is in vlm_resampler/inspection/device_check.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the lent machine reaches no hub; everything is built locally

# device_check.PARTS, kept here so that a bad --parts exits before torch is imported.
PARTS = ("device", "scan", "mamba_ssm", "smoke", "real_size")


def part_list(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list from {','.join(PARTS)}")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("gpu_check.json"), help="the JSON report (default: %(default)s)"
    )
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="fewer real-size steps")
    parser.add_argument(
        "--parts", type=part_list, default=PARTS, help=f"comma-separated, from {','.join(PARTS)} (default: all)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from vlm_resampler.inspection.device_check import run_all, summary

    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        report = run_all(args.out.resolve(), (args.work or Path(scratch)).resolve(), args.quick, args.parts)
    print(summary(report))
    print(f"report written to {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
