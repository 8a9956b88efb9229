"""What train.py does for a sweep (-m) after every job passed preflight and before Hydra submits
anything: fix the sweep directory, snapshot conf/ into it, record the git state and every job, and
create each job's directory (overrides.yaml, status queued). Hydra then composes every job (in
this process, and again on the node for submitit launchers) from the snapshot, not from the live
conf/: a job that waits in the queue runs what was submitted, whatever conf/ has become since.

The jobs are expanded by Hydra's own BasicSweeper code, so their order (the job number) and their
override strings (the hash in the directory name) are the ones Hydra launches.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from vlm_resampler.catalog import CONF_DIR
from vlm_resampler.config.preflight import compose, split_argv, sweep_jobs
from vlm_resampler.errors import ConfigError
from vlm_resampler.runs import layout
from vlm_resampler.runs.atomic import write_json, write_text
from vlm_resampler.runs.run_meta import REPO_ROOT, git_state
from vlm_resampler.sweeps import dirs

MANIFEST_VERSION = 1
# Command-line flags that would make Hydra compose from somewhere else than the snapshot.
CONFIG_SOURCE_FLAGS = ("--config-path", "-cp", "--config-name", "-cn")


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def hydra_quote(value: str) -> str:
    """A value for Hydra's override grammar, whatever characters the path holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def git_snapshot(sweep_dir: Path) -> dict:
    state = git_state()
    if state.get("dirty"):
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        write_text(sweep_dir / dirs.GIT_DIFF, diff.stdout)
        state["diff"] = dirs.GIT_DIFF
        state["untracked"] = untracked.stdout.split()
    return state


def refuse(message: str) -> None:
    print(f"error: {message}\nNothing was submitted.", file=sys.stderr)
    sys.exit(2)


def prepare_sweep(config_name: str, argv: list[str]) -> list[str]:
    """The command line Hydra runs: unchanged without -m; for a sweep, pointed at the snapshot
    (--config-path) and at an absolute, fixed sweep directory (hydra.sweep.dir)."""
    overrides, multirun = split_argv(argv)
    if not multirun:
        return argv
    if any(a in CONFIG_SOURCE_FLAGS or a.startswith(tuple(f + "=" for f in CONFIG_SOURCE_FLAGS)) for a in argv):
        refuse(
            "a sweep composes every job from its own snapshot of conf/; --config-path/--config-name cannot be combined with -m"
        )
    try:
        jobs, hydra_overrides = sweep_jobs(config_name, overrides)
        first = compose(config_name, [*hydra_overrides, *jobs[0]], with_hydra=True)
    except ConfigError as err:
        refuse(str(err))
    hydra_cfg = first.hydra
    sweep_dir = Path(str(hydra_cfg.sweep.dir)).expanduser().resolve()
    if hydra_cfg.runtime.choices.get("hydra/sweeper") == "optuna":
        check_study(first)
        return prepare_study(config_name, argv, sweep_dir, hydra_cfg, hydra_overrides)
    if (sweep_dir / dirs.MANIFEST).exists():
        refuse(
            f"{sweep_dir} already holds a sweep. `python launch/summarize.py --resume {sweep_dir}` runs its "
            "unfinished jobs again; a new sweep needs another hydra.sweep.dir"
        )
    snapshot = sweep_dir / dirs.CONF_SNAPSHOT
    sweep_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(CONF_DIR, snapshot, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)

    names = [dirs.job_dir_name(num, job) for num, job in enumerate(jobs)]
    seen: dict[str, int] = {}
    for num, job in enumerate(jobs):
        digest = dirs.overrides_hash(job)
        if digest in seen:
            shutil.rmtree(sweep_dir)
            refuse(
                f"jobs {seen[digest]} and {num} of the sweep have the same overrides ({' '.join(job)}): each job must differ"
            )
        seen[digest] = num

    submitted = now()
    write_job_dirs(sweep_dir, names, jobs, submitted)
    manifest = new_manifest(config_name, argv, sweep_dir, hydra_cfg, hydra_overrides, submitted)
    manifest["jobs"] = [{"num": num, "dir": name, "overrides": job} for num, (name, job) in enumerate(zip(names, jobs))]
    write_json(sweep_dir / dirs.MANIFEST, manifest)
    print(f"sweep of {len(jobs)} job(s) in {sweep_dir} (conf/ snapshot and sweep.json written); submitting", flush=True)
    return hydra_argv(argv, sweep_dir, snapshot)


def hydra_argv(argv: list[str], sweep_dir: Path, snapshot: Path) -> list[str]:
    kept = [a for a in argv if not a.startswith(("hydra.sweep.dir=", "++hydra.sweep.dir=", "+hydra.sweep.dir="))]
    return [*kept, f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}", f"--config-path={snapshot}"]


def new_manifest(config_name, argv, sweep_dir: Path, hydra_cfg, hydra_overrides: list[str], submitted: str) -> dict:
    return {
        "format_version": MANIFEST_VERSION,
        "submitted": submitted,
        "config_name": config_name,
        "command": ["launch/train.py", *argv],
        "sweep_dir": str(sweep_dir),
        "conf_snapshot": dirs.CONF_SNAPSHOT,
        "git": git_snapshot(sweep_dir),
        "launcher": str(hydra_cfg.runtime.choices.get("hydra/launcher")),
        "hydra_overrides": [o for o in hydra_overrides if not o.startswith("hydra.sweep.dir=")],
        "jobs": [],
        "resubmissions": [],
    }


def write_job_dirs(sweep_dir: Path, names: list[str], jobs: list[list[str]], submitted: str) -> None:
    """Each job's directory before it is launched: its overrides and status queued."""
    for name, job in zip(names, jobs):
        job_dir = sweep_dir / name
        job_dir.mkdir(exist_ok=True)
        write_text(job_dir / dirs.OVERRIDES, OmegaConf.to_yaml(OmegaConf.create(job)))
        write_json(job_dir / layout.STATUS, {"status": "queued", "submitted": submitted})


def record_jobs(sweep_dir: Path, jobs: list[tuple[int, list[str], dict]]) -> None:
    """Jobs a study launches as it goes ((num, overrides, extra fields)): their directories and
    their lines in sweep.json, before the launcher runs them."""
    manifest = read_manifest(sweep_dir)
    names = [dirs.job_dir_name(num, overrides) for num, overrides, _ in jobs]
    write_job_dirs(sweep_dir, names, [overrides for _, overrides, _ in jobs], now())
    listed = {job["num"] for job in manifest["jobs"]}
    for name, (num, overrides, extra) in zip(names, jobs):
        if num not in listed:
            manifest["jobs"].append({"num": num, "dir": name, "overrides": overrides, **extra})
    write_json(sweep_dir / dirs.MANIFEST, manifest)


def check_study(cfg) -> None:
    """A study's own settings, before anything is written: its search space and its objective."""
    from vlm_resampler.sweeps.search_space import search_space

    if not cfg.get("optimized_metric"):
        refuse(
            "hydra/sweeper=optuna needs optimized_metric (e.g. optimized_metric=val/CIDEr): the number each job "
            "returns to the study (conf/hparams_search/ presets set it)"
        )
    try:
        search_space(OmegaConf.to_container(cfg.hydra.sweeper.get("params") or {}, resolve=True))
    except ConfigError as err:
        refuse(str(err))


def prepare_study(config_name: str, argv: list[str], sweep_dir: Path, hydra_cfg, hydra_overrides) -> list[str]:
    """hydra/sweeper=optuna: the jobs are chosen as the study goes (sweeps/study.py). The first
    command snapshots conf/ and writes sweep.json; the same command again continues the study,
    composed from the same snapshot."""
    snapshot = sweep_dir / dirs.CONF_SNAPSHOT
    manifest = read_manifest(sweep_dir)
    task = [o for o in split_argv(argv)[0] if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    if manifest is not None:
        before = [
            o for o in split_argv(manifest["command"][1:])[0] if not o.lstrip("+~").startswith(("hydra.", "hydra/"))
        ]
        if manifest.get("kind") != "study" or before != task:
            refuse(
                f"{sweep_dir} already holds {'another study' if manifest.get('kind') == 'study' else 'a sweep'} "
                f"({' '.join(before) or 'no overrides'}); continue it with the same overrides, or give this one "
                "another hydra.sweep.dir"
            )
        manifest.setdefault("continued", []).append({"at": now(), "command": ["launch/train.py", *argv]})
        write_json(sweep_dir / dirs.MANIFEST, manifest)
        print(f"study in {sweep_dir}: continuing (composed from its conf/ snapshot)", flush=True)
        return hydra_argv(argv, sweep_dir, snapshot)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(CONF_DIR, snapshot, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    manifest = new_manifest(config_name, argv, sweep_dir, hydra_cfg, hydra_overrides, now())
    manifest["kind"] = "study"
    manifest["study"] = {"study_name": str(hydra_cfg.sweeper.study_name), "storage": hydra_cfg.sweeper.storage}
    write_json(sweep_dir / dirs.MANIFEST, manifest)
    print(f"study in {sweep_dir} (conf/ snapshot and sweep.json written); starting", flush=True)
    return hydra_argv(argv, sweep_dir, snapshot)


def read_manifest(sweep_dir: Path) -> dict | None:
    path = Path(sweep_dir) / dirs.MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())
