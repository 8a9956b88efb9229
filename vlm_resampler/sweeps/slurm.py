"""What SLURM still knows about a sweep's jobs (squeue, sacct). Every function answers "unknown"
(an empty result, None) where SLURM's commands are not installed or do not answer: a sweep run
with the basic or local launcher has nothing to ask."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ALIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def submitted_ids(sweep_dir: Path) -> set[str]:
    """The SLURM (array) job ids that submitit used for this sweep (.submitit/<id>[_<task>]/)."""
    folder = Path(sweep_dir) / ".submitit"
    if not folder.is_dir():
        return set()
    return {m.group(1) for p in folder.iterdir() if (m := re.match(r"^(\d+)(?:_\d+)?$", p.name))}


def alive_jobs(sweep_dir: Path) -> list[str]:
    """Jobs of this sweep that SLURM still has queued or running (e.g. '41_[2-3] PENDING')."""
    ids = submitted_ids(sweep_dir)
    if not ids:
        return []
    out = _run(["squeue", "-h", "-o", "%F %i %T", "-j", ",".join(sorted(ids))])
    if out is None:
        # squeue -j fails outright when every listed id is unknown to slurmctld (long finished).
        out = _run(["squeue", "-h", "-o", "%F %i %T"]) or ""
    alive = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ids and parts[2] in ALIVE_STATES:
            alive.append(f"{parts[1]} {parts[2]}")
    return alive


def job_state(job_id: str) -> str | None:
    """sacct's state of one job (e.g. 'CANCELLED by 0', 'TIMEOUT', 'COMPLETED'), or None."""
    out = _run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id])
    if not out:
        return None
    states = [s.strip() for s in out.splitlines() if s.strip()]
    return states[-1] if states else None


def job_id_of(run_meta: dict) -> str | None:
    """The SLURM id of the job that wrote run_meta.json (array task ids as <array>_<task>)."""
    slurm = run_meta.get("slurm") or {}
    if slurm.get("SLURM_ARRAY_JOB_ID") and slurm.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{slurm['SLURM_ARRAY_JOB_ID']}_{slurm['SLURM_ARRAY_TASK_ID']}"
    return slurm.get("SLURM_JOB_ID")
