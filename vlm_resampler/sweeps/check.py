"""The check every job of a sweep passes before anything is submitted: train.py's own validation,
then the whole model instantiated on the meta device (launch/inspect.py's build: shapes only, no
memory, no weights) with each stage's trainable set, so a job that would fail while building its
model fails here, in seconds, with the others listed beside it."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vlm_resampler.config.validate import validate_train_config
from vlm_resampler.errors import ConfigError


def model_report(cfg: DictConfig, label: str = "") -> dict:
    """inspection's report (exact parameter counts, tokens, per-stage trainable counts) of a
    composed train config."""
    from vlm_resampler.inspection.counts import inspect_source
    from vlm_resampler.inspection.sources import Source

    stages = list(cfg.stages)
    source = Source(
        label=label,
        kind="overrides",
        model_tree=OmegaConf.to_container(cfg.model, resolve=True),
        stages=stages,
        stage_configs={s: OmegaConf.to_container(cfg.stage[s], resolve=True) for s in stages},
    )
    try:
        return inspect_source(source)
    except ConfigError:
        raise
    except Exception as err:  # any failure to build is this job's error
        raise ConfigError(f"the model cannot be built on the meta device: {type(err).__name__}: {err}") from err


def validate_sweep_job(cfg: DictConfig) -> None:
    validate_train_config(cfg)
    model_report(cfg)
