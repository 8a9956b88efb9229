#!/usr/bin/env python
"""Train a panoramic VLM: compose conf/train.yaml with the command line, run the chosen stages.

    python launch/train.py                                   # offline default, all three stages
    python launch/train.py resampler=mlp resampler.hidden_dim=1024 experiment.name=mlp1024
    python launch/train.py -m resampler.hidden_dim=512,1024  # a sweep, one job each
    python launch/train.py debug=smoke                       # a few steps, for checks
    torchrun --nproc_per_node=2 launch/train.py experiment.name=ddp   # DDP; stage batch_size is global

Running the same command again resumes an unfinished run (killed, SIGUSR2/SIGTERM, preempted).

The model is built by vlm_resampler.training.run.run_training -> runs.load.build_model ->
models.vlm.PanoramaVLM (hydra.utils.instantiate of the config's `model` tree).
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vlm_resampler.config.preflight import backbone_names, preflight, split_argv
from vlm_resampler.config.validate import check_run_dir_free, validate_train_config
from vlm_resampler.hub import configure_hub_access
from vlm_resampler.sweeps.check import validate_sweep_job
from vlm_resampler.sweeps.job import evaluate_if_asked
from vlm_resampler.sweeps.submit import prepare_sweep
from vlm_resampler.training.distributed import is_main_process, torchrun_overrides


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from vlm_resampler.training.interrupt import TrainingInterrupted
    from vlm_resampler.training.run import run_training

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        last = run_training(cfg, run_dir)
    except TrainingInterrupted as stop:
        stop.exit()  # resumable checkpoint saved; under submitit the job is requeued
    if is_main_process():
        print(f"run finished: {run_dir} (last stage: {last}); evaluate with: python launch/eval.py checkpoint_dir={last}")
    evaluate_if_asked(cfg, run_dir, last)  # eval_after=true: evaluate the last stage now


def configure_hub(configs: list[DictConfig]) -> None:
    configure_hub_access(backbone_names(configs))


if __name__ == "__main__":
    sys.argv += torchrun_overrides(sys.argv[1:])
    run_dir_check = check_run_dir_free if is_main_process() else None  # rank 0 may already be writing it
    # A sweep's jobs are also built on the meta device before anything is submitted.
    validate = validate_sweep_job if split_argv(sys.argv[1:])[1] else validate_train_config
    preflight("train", sys.argv[1:], validate=validate, before_validate=configure_hub, single_run_check=run_dir_check)
    sys.argv[1:] = prepare_sweep("train", sys.argv[1:])  # -m: conf/ snapshot, sweep.json, job dirs
    main()
