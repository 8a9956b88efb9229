"""The checks launch/train.py and launch/eval.py make on their command line before anything is
built or submitted; the bad-config corpus (tests/data/bad_configs.yaml) runs them in-process."""

from __future__ import annotations

from omegaconf import DictConfig


def check_train_argv(argv: list[str], configure_hub: bool = True) -> list[DictConfig]:
    """Compose and validate every job of a train.py command line; on error print and exit 2.
    `configure_hub=False` skips deciding hub access (which must precede the first transformers
    import, so it can happen once per process only)."""
    from vlm_resampler.config.external import check_run_dir_free
    from vlm_resampler.config.preflight import backbone_names, preflight
    from vlm_resampler.config.validate import validate_train_config
    from vlm_resampler.hub import configure_hub_access
    from vlm_resampler.sweeps.check import validate_sweep_job
    from vlm_resampler.training.distributed import is_main_process

    def hub(configs: list[DictConfig]) -> None:
        configure_hub_access(backbone_names(configs))

    run_dir_check = check_run_dir_free if is_main_process() else None  # rank 0 may already be writing it
    # A sweep's jobs are also built on the meta device before anything is submitted.
    return preflight(
        "train",
        argv,
        validate=validate_train_config,
        before_validate=hub if configure_hub else None,
        single_run_check=run_dir_check,
        sweep_validate=validate_sweep_job,
    )


def check_eval_argv(argv: list[str], configure_hub: bool = True) -> list[str]:
    """Translate and check an eval.py command line (exit 2 on error); returns Hydra's argv."""
    from vlm_resampler.config.preflight import preflight
    from vlm_resampler.evaluation.cli import check_eval_config, configure_hub_for_eval, translate_argv

    hydra_argv = translate_argv(argv)
    preflight(
        "eval",
        hydra_argv,
        validate=check_eval_config,
        before_validate=configure_hub_for_eval if configure_hub else None,
    )
    return hydra_argv
