"""run_meta.json: where and how a run happened (git, seed, host, SLURM, versions, choices)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from vlm_resampler.runs.metadata import software_versions

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_state() -> dict:
    def git(*args: str) -> str | None:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def group_choices() -> dict:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}


def run_meta(cfg: DictConfig) -> dict:
    return {
        "experiment": cfg.experiment.name,
        "seed": int(cfg.seed),
        "git": git_state(),
        "host": platform.node(),
        "argv": sys.argv,
        "slurm": {
            k: v
            for k, v in os.environ.items()
            if k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
        },
        "choices": group_choices(),
        "software": software_versions(),
    }
