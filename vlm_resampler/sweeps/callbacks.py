"""A Hydra callback (registered in train.yaml under hydra.callbacks) for sweeps.

Timestamps: a job's config is composed again in the job's own process (on the node, for
submitit launchers), and again when SLURM requeues it; its `${now:...}` values (the default
experiment.name) come from the launching process's config only when that config resolved them
first (Hydra copies its resolver cache into every job). train.py fixes the sweep directory before
Hydra starts, so nothing would resolve them there: this callback does, once, when the sweep starts,
and records them in sweep.json, so that every job, every requeue of a job and every job submitted
again by `summarize --resume` sees the same values (a requeued run resumes only with the same
config).

Importing this module also registers the job-directory resolver (dirs.py): submitit unpickles
the callback in every job process before the job's directory is resolved.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vlm_resampler.sweeps import dirs

NOW = "now"


NOW_INTERPOLATION = re.compile(r"\$\{now:[^${}]*\}")


def resolve_task_values(config: DictConfig) -> None:
    """Fill the resolver cache with every `${now:...}` of the task config (not hydra's). Only these
    are resolved (other values may need the job, e.g. ${hydra:runtime...}), by Hydra's own
    resolver on a probe config that shares the cache."""
    raw = OmegaConf.to_container(config, resolve=False)
    raw.pop("hydra", None)
    found = sorted(set(NOW_INTERPOLATION.findall(json.dumps(raw))))
    if not found:
        return
    probe = OmegaConf.create({f"value_{i}": text for i, text in enumerate(found)})
    OmegaConf.set_cache(probe, OmegaConf.get_cache(config))
    OmegaConf.to_container(probe, resolve=True)
    OmegaConf.set_cache(config, OmegaConf.get_cache(probe))


def now_values(config: DictConfig) -> list[list]:
    """The resolver cache of ${now:...}: [[args, value], ...] (JSON-friendly)."""
    cache = OmegaConf.get_cache(config).get(NOW, {})
    return [[list(args), value] for args, value in cache.items()]


def restore_now_values(config: DictConfig, values: list[list]) -> None:
    cache = OmegaConf.get_cache(config)
    cache[NOW] = {tuple(args): value for args, value in values}
    OmegaConf.set_cache(config, cache)


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vlm_resampler.runs.atomic import write_json
        from vlm_resampler.sweeps.submit import read_manifest

        sweep_dir = Path(str(config.hydra.sweep.dir))
        manifest = read_manifest(sweep_dir)
        if manifest is not None and manifest.get(NOW):
            restore_now_values(config, manifest[NOW])  # a sweep submitted again: its first values
        resolve_task_values(config)
        if manifest is not None and not manifest.get(NOW):
            manifest[NOW] = now_values(config)
            write_json(sweep_dir / dirs.MANIFEST, manifest)
