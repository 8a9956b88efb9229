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

from hydra_plugins.vlm_resampler_optuna import register as register_optuna_sweeper
from hydra_plugins.vlm_resampler_slurm import register as register_slurm_launcher
from vlm_resampler.cli import check_train_argv
from vlm_resampler.sweeps.job import evaluate_if_asked, objective_if_asked
from vlm_resampler.sweeps.submit import prepare_sweep
from vlm_resampler.training.distributed import is_main_process, torchrun_overrides


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from vlm_resampler.data.datasets import BadImageError
    from vlm_resampler.errors import UserFacingError, exit_with
    from vlm_resampler.training.interrupt import TrainingInterrupted
    from vlm_resampler.training.run import run_again, run_training

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        last = run_training(cfg, run_dir)
    except TrainingInterrupted as stop:
        stop.exit()  # resumable checkpoint saved; under submitit the job is requeued
    except BadImageError as err:  # status interrupted, traceback.txt written: the run resumes once the data is fixed
        print(
            f"error: training stopped: {err}\n  {run_dir} is left resumable (traceback in {run_dir}/traceback.txt); "
            f"repair the data, then {run_again(cfg)}",
            file=sys.stderr,
        )
        sys.exit(1)
    except UserFacingError as err:  # e.g. a damaged init_from checkpoint: one line, no traceback
        exit_with(err, f"training {run_dir}")
    if is_main_process():
        print(
            f"run finished: {run_dir} (last stage: {last}); evaluate with: python launch/eval.py checkpoint_dir={last}"
        )
    evaluate_if_asked(cfg, run_dir, last)  # eval_after=true: evaluate the last stage now
    return objective_if_asked(cfg, last)  # optimized_metric set: the number an Optuna study gets back


if __name__ == "__main__":
    register_optuna_sweeper()  # hydra/sweeper=optuna (conf/hydra/sweeper/optuna.yaml)
    register_slurm_launcher()  # hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml)
    sys.argv += torchrun_overrides(sys.argv[1:])
    check_train_argv(sys.argv[1:])  # bad config: a short message, exit 2, nothing built or submitted
    sys.argv[1:] = prepare_sweep("train", sys.argv[1:])  # -m: conf/ snapshot, sweep.json, job dirs
    main()
