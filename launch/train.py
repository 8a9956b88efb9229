#!/usr/bin/env python
"""Train a panoramic VLM: compose conf/train.yaml with the command line, run the chosen stages.

    python launch/train.py                                   # offline default, all three stages
    python launch/train.py resampler=mlp resampler.hidden_dim=1024 experiment.name=mlp1024
    python launch/train.py -m resampler.hidden_dim=512,1024  # a sweep, one job each
    python launch/train.py debug=smoke                       # a few steps, for checks

The model is built by vlm_resampler.training.run.run_training -> runs.load.build_model ->
models.vlm.PanoramaVLM (hydra.utils.instantiate of the config's `model` tree).
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vlm_resampler.config.preflight import backbone_names, preflight
from vlm_resampler.config.validate import check_run_dir_free, validate_train_config
from vlm_resampler.hub import configure_hub_access


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from vlm_resampler.training.run import run_training

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    last = run_training(cfg, run_dir)
    print(f"run finished: {run_dir} (last stage: {last}); evaluate with: python launch/eval.py checkpoint_dir={last}")


def configure_hub(configs: list[DictConfig]) -> None:
    configure_hub_access(backbone_names(configs))


if __name__ == "__main__":
    preflight(
        "train", sys.argv[1:], validate=validate_train_config, before_validate=configure_hub, single_run_check=check_run_dir_free
    )
    main()
