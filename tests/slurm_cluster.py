"""A real SLURM for the tests marked `slurm` (no mock): the single-node cluster that
`bash .ci/slurm/start.sh` starts on this machine (slurmctld + slurmd on 127.0.0.1, accounting
through slurmdbd + MariaDB, partition `debug`); `.ci/run` starts it before the tests and stops it
after them (`bash .ci/slurm/stop.sh`).

API (import it from a test module as `from slurm_cluster import ...`; tests/ is on sys.path):

    @pytest.mark.slurm
    def test_x(slurm, tmp_path):          # `slurm`: session fixture, a SlurmCluster
        name = unique_job_name("x")       # a job name no other test (or engineer) uses
        overrides = slurm.launcher_overrides(name)   # hydra/launcher=slurm set up for this cluster
        ...
        slurm.wait_for(lambda: slurm.jobs(name), timeout=60)   # [(job id, state), ...] in squeue
        slurm.cancel("41_1")              # scancel
        slurm.state("41_0")               # sacct's state now, e.g. "RUNNING", "CANCELLED by 0"
        slurm.final_state("41_0")         # sacct's state once the job has ended, e.g. "COMPLETED"

Every test marked `slurm` gets the fixture (conftest.py adds it), so where no SLURM answers the
test is skipped with the reason, and with VLM_RESAMPLER_REQUIRE_SLURM=1 (CI) it fails instead:
CI can never pass by skipping them. SLURM is "there" when `scontrol ping` answers and `sacct`
works (submitit reads job states through sacct only; without it a cancelled job hangs).

Keep SLURM tests few and small: jobs share the machine's 2 cores with the test runner (the node
advertises 4 CPUs, so 4 one-CPU jobs run at once). Give every sweep its own hydra.sweep.dir under
tmp_path (job ids restart at 1 after `stop.sh --purge`, and a reused .submitit/ folder would hold
an old result under a new job's id).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_ENV = "VLM_RESAMPLER_REQUIRE_SLURM"
RUNTIME_DIR = Path(os.environ.get("VLM_RESAMPLER_SLURM_DIR", "/tmp/vlm_resampler-slurm"))
START_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "slurm" / "start.sh"


def _run(*command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)


def slurm_unavailable() -> str | None:
    """Why no usable SLURM answers here, or None when one does."""
    if shutil.which("scontrol") is None or shutil.which("sbatch") is None:
        return "the SLURM commands are not installed"
    try:
        if _run("scontrol", "ping", timeout=10).returncode != 0:
            return "slurmctld does not answer `scontrol ping`"
        done = _run("sacct", "-n", "-X", "-S", "now", timeout=10)
    except subprocess.TimeoutExpired as err:
        return f"`{' '.join(err.cmd)}` did not answer in {err.timeout} s"
    if done.returncode != 0:
        return f"sacct fails (no accounting; submitit needs it): {done.stderr.strip()}"
    return None


def unique_job_name(prefix: str) -> str:
    return f"vlmtest-{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class SlurmCluster:
    partition: str = "debug"
    logs: Path = RUNTIME_DIR / "log"

    def launcher_overrides(self, job_name: str, timeout_min: int = 10, **launcher) -> list[str]:
        """Hydra overrides that send a sweep to this cluster: CPU only (no GRES here), one CPU and
        2 GB per job, a short time limit, `job_name` as the SLURM job name. `launcher` adds or
        replaces hydra.launcher keys (e.g. array_parallelism=1)."""
        settings = {
            "partition": self.partition,
            "gpus_per_node": "null",
            "tasks_per_node": 1,
            "cpus_per_task": 1,
            "mem_gb": 2,
            "timeout_min": timeout_min,
            "name": job_name,
        } | launcher
        return ["hydra/launcher=slurm", *(f"hydra.launcher.{k}={v}" for k, v in settings.items())]

    def jobs(self, name: str) -> list[tuple[str, str]]:
        """(job id, state) of every job called `name` that squeue lists (array tasks as <A>_<i>;
        pending tasks of an array may show as one line, <A>_[2-3])."""
        done = _run("squeue", "-h", "-n", name, "-o", "%i %T")
        return [tuple(line.split()[:2]) for line in done.stdout.splitlines() if line.strip()]

    def array_id(self, name: str) -> str | None:
        done = _run("squeue", "-h", "-n", name, "-o", "%F")
        ids = sorted({line.strip() for line in done.stdout.splitlines() if line.strip()})
        return ids[0] if ids else None

    def cancel(self, job_id: str) -> None:
        done = _run("scancel", job_id)
        assert done.returncode == 0, f"scancel {job_id}: {done.stderr}"

    def state(self, job_id: str) -> str | None:
        done = _run("sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id)
        states = [s for s in done.stdout.splitlines() if s.strip()]
        return states[-1] if states else None

    # States a job passes through before its end: the submitit launcher returns once a job's result
    # file is written, which is before slurmd reports the job's end (CI saw RUNNING right after).
    ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")

    def final_state(self, job_id: str, timeout: float = 60) -> str | None:
        """sacct's state once the job has left the active states (None if sacct never lists it).
        slurmdbd records asynchronously: CI saw no record at all for a task cancelled while pending,
        right after the launcher returned, so an absent record is waited for like an active one."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(job_id)
            if (state is not None and not state.startswith(self.ACTIVE_STATES)) or time.monotonic() >= deadline:
                return state
            time.sleep(0.5)

    @staticmethod
    def wait_for(condition, timeout: float, interval: float = 0.5, what: str = "condition"):
        """Poll `condition()` until it returns something truthy; that value, or a failed test."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout} s waiting for {what}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of slurmctld's and slurmd's logs (for a failing test's message)."""
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.logs / name
            if path.is_file():
                out += [f"--- {path}", *path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    why = slurm_unavailable()
    if why is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but there is no usable SLURM: {why} (start one: bash {START_SCRIPT})")
        pytest.skip(f"no SLURM here ({why}); start one with `bash .ci/slurm/start.sh`")
    return SlurmCluster()


def group_slurm_tests(items) -> None:
    """Every test marked `slurm` gets the `slurm` fixture: skipped, or failed when required; and
    under pytest-xdist they all run on one worker, one after another (the local cluster has as many
    CPUs as the machine, so two sweeps at once would queue behind each other and time out)."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
            if "slurm" not in getattr(item, "fixturenames", ["slurm"]):
                item.fixturenames.append("slurm")
