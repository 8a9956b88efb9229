#!/usr/bin/env python
"""The GPU checks as one prepared command (under 8 minutes on one lent GPU), writing a JSON report:
three stages of debug=smoke in bf16 and their eval, a real-size resampler step (seconds, tokens/s,
model FLOPs utilisation, peak memory against inspect's plan), our selective scan against the
reference (values and gradients), and mamba-ssm's kernel against ours where it is installed.
Without a GPU the same parts run on the CPU, smaller.

    python launch/gpu_check.py                          # writes gpu_check.json
    python launch/gpu_check.py --out $OUT/gpu_check.json --quick

Exit status 0 when every part passed. The logic is in vlm_resampler/inspection/device_check.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the lent machine reaches no hub; everything is built locally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("gpu_check.json"), help="the JSON report (default: %(default)s)"
    )
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="fewer real-size steps")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from vlm_resampler.inspection.device_check import run_all, summary

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        report = run_all(args.out.resolve(), (args.work or Path(scratch)).resolve(), args.quick)
    print(summary(report))
    print(f"report written to {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
