#!/usr/bin/env python
"""Evaluate a checkpoint directory: rebuild the model from the directory alone, generate for the
test split, score with the COCO caption metrics, write predictions.csv, metrics.json and
report.html.

    python launch/eval.py checkpoint_dir=runs/NAME/finetune
    python launch/eval.py --checkpoint-dir runs/NAME          # a run dir: its last completed stage
    python launch/eval.py checkpoint_dir=runs/NAME/finetune debug=smoke
    python launch/eval.py --checkpoint-dir runs/NAME --no-verify   # verify=false: skip the sha256 check (logged)
    python launch/eval.py checkpoint_dir=runs/NAME precision=bf16  # on the GPU when there is one (device=auto)

Or score an existing predictions file, without loading any model:

    python launch/eval.py --csv-input predictions.csv [--out DIR]
"""

from __future__ import annotations

import sys


def evaluate_model(argv: list[str]) -> None:
    import hydra
    from omegaconf import DictConfig

    from vlm_resampler.cli import check_eval_argv

    @hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        from vlm_resampler.errors import short_errors
        from vlm_resampler.evaluation.evaluate import evaluate_checkpoint

        with short_errors(f"eval of {cfg.checkpoint_dir}"):  # a damaged or foreign checkpoint, bad data
            evaluate_checkpoint(cfg)

    sys.argv[1:] = check_eval_argv(argv)  # bad input: a short message, exit 2, nothing loaded
    main()


if __name__ == "__main__":
    if any(arg == "--csv-input" or arg.startswith("--csv-input=") for arg in sys.argv[1:]):
        # Before anything else is imported: this path must not pay for torch or transformers.
        from vlm_resampler.evaluation.csv_input import main as score_csv

        sys.exit(score_csv(sys.argv[1:]))
    evaluate_model(sys.argv[1:])
