#!/usr/bin/env python
"""Evaluate a checkpoint directory: rebuild the model from the directory alone, generate for the
test split, score with the COCO caption metrics, write predictions.csv and metrics.json.

    python launch/eval.py checkpoint_dir=runs/NAME/finetune
    python launch/eval.py --checkpoint-dir runs/NAME          # a run dir: its last completed stage
    python launch/eval.py checkpoint_dir=runs/NAME/finetune debug=smoke
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from vlm_resampler.config.preflight import preflight
from vlm_resampler.evaluation.cli import check_eval_config, configure_hub_for_eval, translate_argv


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from vlm_resampler.evaluation.evaluate import evaluate_checkpoint

    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    sys.argv[1:] = translate_argv(sys.argv[1:])
    preflight("eval", sys.argv[1:], validate=check_eval_config, before_validate=configure_hub_for_eval)
    main()
