"""vlm_resampler: train and compare vision-to-language resamplers on 360° panoramas."""

from __future__ import annotations

from vlm_resampler.version import __version__

__all__ = ["__version__", "load_from_run", "load_stage"]


def __getattr__(name: str):
    # Lazy, so `import vlm_resampler` stays cheap for config tools.
    if name in ("load_from_run", "load_stage"):
        from vlm_resampler.runs import load

        return getattr(load, name)
    raise AttributeError(f"module 'vlm_resampler' has no attribute {name!r}")
