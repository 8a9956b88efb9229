"""Submit a sweep's unfinished jobs again (launch/summarize.py --resume), each into its own
directory, with the launcher settings the sweep was submitted with (plus any given now), every job
composed from the sweep's conf/ snapshot and run by launch/train.py's own task function.

Hydra's sweepers only make cartesian products, and an unfinished subset of a sweep is rarely one,
so the jobs go straight to the sweep's launcher (what Hydra's BasicSweeper does with each batch):
one SLURM job array for all of them under hydra/launcher=slurm. A job keeps its directory because
that directory is named by the hash of its overrides (dirs.sweep_job_dir), and it sees the same
${now:} values as at first (callbacks.py): the same config, so a job that ran can continue from
what its directory holds.
"""

from __future__ import annotations

from pathlib import Path

from vlm_resampler.runs import layout
from vlm_resampler.runs.atomic import write_json
from vlm_resampler.sweeps import dirs, slurm
from vlm_resampler.sweeps.callbacks import NOW, restore_now_values
from vlm_resampler.sweeps.submit import hydra_quote, now, read_manifest


class ResumeError(RuntimeError):
    pass


def launch_jobs(sweep_dir: Path, manifest: dict, jobs: list[list[str]], extra_hydra_overrides: list[str]) -> list:
    """Run `jobs` (override lists) through the sweep's launcher; returns Hydra's JobReturns."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    from vlm_resampler.sweeps.job import train_task_function

    conf_dir = sweep_dir / manifest.get("conf_snapshot", dirs.CONF_SNAPSHOT)
    task_function = train_task_function()
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(
        task_name=manifest.get("config_name", "train"), config_search_path=create_config_search_path(str(conf_dir))
    )
    overrides = [
        *manifest.get("hydra_overrides", []),
        *extra_hydra_overrides,
        f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}",
    ]
    cfg = hydra.compose_config(
        manifest.get("config_name", "train"),
        overrides=overrides,
        run_mode=RunMode.MULTIRUN,
        with_log_configuration=True,
    )
    restore_now_values(cfg, manifest.get(NOW, []))  # the ${now:} values of the first submission
    HydraConfig.instance().set_config(cfg)
    context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
    launcher = Plugins.instance().instantiate_launcher(config=cfg, hydra_context=context, task_function=task_function)
    return list(launcher.launch([list(job) for job in jobs], initial_job_idx=0))


def resume_sweep(sweep_dir: Path, jobs, extra_hydra_overrides: list[str]) -> tuple[list, list[str]]:
    """Submit the jobs of `jobs` (collect.JobSummary) that are not done; returns (the jobs
    submitted, what went wrong: one line per failed job)."""
    from hydra.core.utils import JobStatus

    sweep_dir = Path(sweep_dir).resolve()
    manifest = read_manifest(sweep_dir)
    if manifest is None:
        raise ResumeError(
            f"{sweep_dir}: no {dirs.MANIFEST}: only sweeps submitted by `launch/train.py -m` can be resumed"
        )
    alive = slurm.alive_jobs(sweep_dir)
    if alive:
        raise ResumeError(
            f"{sweep_dir}: SLURM still has jobs of this sweep ({', '.join(alive)}); wait for them to end or "
            "scancel them, then resume"
        )
    todo = [j for j in jobs if not j.finished]
    if not todo:
        return [], []
    for job in todo:
        # A job that ran keeps its directory as it is: the run continues from what it holds
        # (training/run.py: completed stages are skipped); one that never got a directory gets one.
        if job.status == "missing":
            from omegaconf import OmegaConf

            job.dir.mkdir(parents=True, exist_ok=True)
            (job.dir / dirs.OVERRIDES).write_text(OmegaConf.to_yaml(OmegaConf.create(job.overrides)))
            write_json(job.dir / layout.STATUS, {"status": "queued", "submitted": now()})
    manifest.setdefault("resubmissions", []).append(
        {"submitted": now(), "jobs": [j.dir.name for j in todo], "hydra_overrides": list(extra_hydra_overrides)}
    )
    write_json(sweep_dir / dirs.MANIFEST, manifest)
    print(f"resubmitting {len(todo)} job(s) of {sweep_dir}: {', '.join(j.dir.name for j in todo)}", flush=True)

    problems = []
    try:
        returns = launch_jobs(sweep_dir, manifest, [j.overrides for j in todo], extra_hydra_overrides)
    except Exception as err:  # submitit raises for a job that was cancelled or killed
        return todo, [f"{type(err).__name__}: {err}"]
    for job, ret in zip(todo, returns):
        if ret.status == JobStatus.FAILED:
            problems.append(f"{job.dir.name}: {type(ret._return_value).__name__}: {ret._return_value}")
    return todo, problems
