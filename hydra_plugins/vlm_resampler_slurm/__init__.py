"""hydra/launcher=slurm's launcher (conf/hydra/launcher/slurm.yaml): hydra-submitit-launcher's
SlurmLauncher, with two endings that say what happened instead of a traceback through Hydra and
submitit:
- a job array sbatch refuses (a partition or account the cluster does not have, GPUs a partition
  has none of, a time limit over its maximum): sbatch's own words and the request, exit status 1;
- Ctrl-C while the command waits for its jobs: it stops waiting, and says that the jobs keep
  running on SLURM, which ones, and how to follow, stop or summarise them; exit status 130.
Hydra instantiates launchers only from the hydra_plugins namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from submitit.core.utils import FailedJobError

from vlm_resampler.sweeps.slurm import alive_jobs, submitted_ids

# What sbatch is asked for, in the order a person checks it against the cluster.
REQUEST_KEYS = ("partition", "account", "qos", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb",
                "timeout_min", "constraint", "additional_parameters")  # fmt: skip


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        try:
            return super().launch(job_overrides, initial_job_idx)
        except FailedJobError as err:
            # submitit raises FailedJobError both for sbatch's refusal (from the sbatch command's
            # CalledProcessError) and for a job that ran and failed (the sweep handles those).
            if not isinstance(err.__cause__, subprocess.CalledProcessError):
                raise
            asked = {key: self.params.get(key) for key in REQUEST_KEYS}
            request = ", ".join(f"{key}={value}" for key, value in asked.items() if value not in (None, {}, [], ""))
            said = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
            print(
                f"error: SLURM refused the job array of {len(job_overrides)} job(s); none of them was submitted.\n"
                f"  {said}\n"
                f"  asked for: {request}\n"
                "  change them with hydra.launcher.KEY=VALUE (or a cluster's own in conf/local/slurm.yaml) and run "
                "the command again",
                file=sys.stderr,
            )
            sys.exit(1)
        except KeyboardInterrupt:
            self.stop_waiting()

    def stop_waiting(self) -> None:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        arrays = sorted(submitted_ids(sweep_dir))
        if not arrays:  # interrupted before, or while, sbatch took the array
            print(
                f"\ninterrupted while submitting the job array of {sweep_dir}: `squeue --me` shows whether SLURM "
                "took it; if it did not, run the command again",
                file=sys.stderr,
            )
            sys.exit(130)
        alive = alive_jobs(sweep_dir)
        study = "optuna" in str(self.config.hydra.sweeper.get("_target_", "")).lower()
        after = (
            "the same command again continues the study"
            if study
            else f"`python launch/summarize.py {sweep_dir}` reports them, with --resume it submits those that did not finish"
        )
        print(
            f"\ninterrupted: stopped waiting; the sweep's jobs keep running on SLURM without this command "
            f"(job array {', '.join(arrays)}: {'; '.join(alive) or 'none queued or running now'}).\n"
            f"  `squeue -j {','.join(arrays)}` follows them, `scancel {' '.join(arrays)}` stops them; {after}",
            file=sys.stderr,
        )
        sys.exit(130)


def register() -> None:
    """Hydra's plugin scan does not see this package in an editable install (see
    hydra_plugins/vlm_resampler_optuna), so the commands that launch register it explicitly."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(SlurmLauncher)
