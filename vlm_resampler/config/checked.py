"""One config, composed from overrides and checked the way train.py checks it before starting."""

from __future__ import annotations

from omegaconf import DictConfig


def compose_checked(overrides: list[str], validate, config_name: str = "train") -> tuple[DictConfig, list[str]]:
    """Compose `config_name` with `overrides` through preflight's checks (unknown groups, options
    and keys, with the closest valid names), then `validate(cfg)`, which may return notes.
    Raises ConfigError with the message preflight would print."""
    from vlm_resampler.config.preflight import compose_job, config_groups

    cfg, _ = compose_job(config_name, overrides, config_groups())
    return cfg, list(validate(cfg) or [])
