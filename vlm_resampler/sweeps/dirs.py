"""Names in a sweep directory, and the job directory of each job.

    multirun/<sweep>/
      sweep.json                 what was submitted: command line, git sha, launcher, every job
      conf/                      the conf/ tree at submission: every job composes from it
      git_diff.patch             uncommitted changes at submission (only when the tree was dirty)
      <num>_<hash>/              one job: num is its place in the sweep, hash the first 8 hex of
          overrides.yaml         the sha1 of its sorted overrides (stable: never a SLURM job id,
          status.json            which changes when a job is requeued or resubmitted)
          ... the run directory layout (resolved_config.yaml, stage dirs, ...)
      .submitit/<slurm id>/      submitit's pickles and the jobs' stdout/stderr
      summary.csv|md|png         written by launch/summarize.py

Hydra names each job's directory through the `sweep_job_dir` resolver (train.yaml's
hydra.sweep.subdir). A job submitted again (summarize --resume) has the same overrides, so the
same hash, and goes back into its own directory whatever its new job number.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

MANIFEST = "sweep.json"
CONF_SNAPSHOT = "conf"
GIT_DIFF = "git_diff.patch"
OVERRIDES = "overrides.yaml"
SUMMARY_CSV, SUMMARY_MD, SUMMARY_PNG = "summary.csv", "summary.md", "summary.png"
JOB_DIR = re.compile(r"^(\d+)_([0-9a-f]{8})$")
RESOLVER = "sweep_job_dir"


def overrides_hash(overrides) -> str:
    """8 hex digits that name a job by its overrides (order-independent)."""
    text = "\n".join(sorted(str(o) for o in overrides))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def job_dir_name(num: int, overrides) -> str:
    return f"{int(num)}_{overrides_hash(overrides)}"


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep, by job number."""
    found = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and JOB_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(JOB_DIR.match(p.name).group(1)))


def sweep_job_dir(sweep_dir, num, overrides) -> str:
    """hydra.sweep.subdir of a job: the existing directory with this job's hash (a job submitted
    again), else <num>_<hash>."""
    digest = overrides_hash(list(overrides))
    sweep = Path(str(sweep_dir))
    if sweep.is_dir():
        for path in job_dirs(sweep):
            if path.name.endswith("_" + digest):
                return path.name
    return f"{int(num)}_{digest}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, sweep_job_dir)


# Imported wherever a job's directory is resolved: the launching process and, through the task
# function it references, every job process (submitit unpickles the task before it resolves the dir).
register_resolvers()
