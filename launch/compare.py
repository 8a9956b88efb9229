#!/usr/bin/env python
"""Compare two evals of the same test items, item by item: each metric's A, B, the mean difference
A - B with its 95% paired-bootstrap interval over the test panoramas, and how often A came out above B.

    python launch/compare.py runs/A/finetune/eval/synthpano-test runs/B/finetune/eval/synthpano-test
    python launch/compare.py EVAL_A EVAL_B --json comparison.json

Exit status: 0 when compared, 2 when the two are not evals of the same items.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from vlm_resampler.evaluation.compare import main

    sys.exit(main(sys.argv[1:]))
