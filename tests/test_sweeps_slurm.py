"""Sweeps on a real SLURM (tests/slurm_cluster.py; `.ci/run` starts one): a 4-job sweep as one job
array that completes and summarises, and a job cancelled while queued that `summarize --resume`
submits again into its own directory, composed from the sweep's conf/ snapshot."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT, run_cli
from slurm_cluster import unique_job_name
from test_sweeps import SMALL, manifest, status
from vlm_resampler.runs import layout
from vlm_resampler.sweeps import dirs
from vlm_resampler.sweeps.slurm import job_id_of, submitted_ids

pytestmark = pytest.mark.slurm


def test_four_job_sweep_runs_as_one_array_and_summarises(slurm, tmp_path):
    name = unique_job_name("four")
    sweep = tmp_path / "multirun" / "four"
    done = run_cli("train.py", "-m", *slurm.launcher_overrides(name), "resampler=mlp,bimamba", "resampler.hidden_dim=16,32",
                   *SMALL, f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:] + "\n" + slurm.log_tail()

    jobs = manifest(sweep)["jobs"]
    assert len(jobs) == 4 and manifest(sweep)["launcher"] == "slurm"
    arrays = submitted_ids(sweep)  # from the names of submitit's .submitit/<id>_<task>/ folders
    assert len(arrays) == 1, f"one job array, got {arrays}"
    (array,) = arrays
    for job in jobs:
        job_dir = sweep / job["dir"]
        assert job["dir"] == dirs.job_dir_name(job["num"], job["overrides"]) and array not in job["dir"]
        assert status(job_dir)["status"] == "done"
        meta = json.loads((job_dir / layout.RUN_META).read_text())
        assert meta["slurm"]["SLURM_ARRAY_JOB_ID"] == array, "the job ran under SLURM, as a task of the array"
        assert slurm.state(f"{array}_{meta['slurm']['SLURM_ARRAY_TASK_ID']}") == "COMPLETED"
    assert sorted(p.name for p in dirs.job_dirs(sweep)) == sorted(j["dir"] for j in jobs)

    summary = run_cli("summarize.py", str(sweep))
    assert summary.returncode == 0, summary.stderr[-3000:]
    with open(sweep / dirs.SUMMARY_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["resampler"], r["resampler.hidden_dim"]) for r in rows] == [("mlp", "16"), ("mlp", "32"), ("bimamba", "16"), ("bimamba", "32")]
    assert all(r["status"] == "done" and int(r["params_total"]) > 0 and float(r["resampler_final_loss"]) > 0 for r in rows)
    bimamba = [int(r["params_resampler"]) for r in rows if r["resampler"] == "bimamba"]
    assert bimamba[0] < bimamba[1], "hidden_dim 32 has more parameters than 16"
    assert (sweep / dirs.SUMMARY_PNG).is_file() and "4 of 4 job(s) done" in (sweep / dirs.SUMMARY_MD).read_text()


def test_job_cancelled_in_the_queue_is_resumed_into_its_dir_from_the_snapshot(slurm, tmp_path):
    name = unique_job_name("resume")
    sweep = tmp_path / "multirun" / "cancel"
    # One task at a time: the second stays PENDING while the first runs, and is cancelled there.
    command = [sys.executable, str(REPO_ROOT / "launch" / "train.py"), "-m", *slurm.launcher_overrides(name, array_parallelism=1),
               "resampler=mlp", "resampler.hidden_dim=16,32", *SMALL, f"hydra.sweep.dir={sweep}"]
    with open(tmp_path / "sweep.log", "w") as log:
        launcher = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            array = slurm.wait_for(lambda: slurm.array_id(name), timeout=120, what=f"the array of {name} in squeue")
            # Only once task 0 runs: a task cancelled while the whole array is still pending leaves no
            # accounting record of its own, and submitit (which asks sacct only) would wait for it forever.
            states = lambda: {state for _, state in slurm.jobs(name)}  # noqa: E731
            slurm.wait_for(lambda: {"RUNNING", "PENDING"} <= states(), timeout=120, what="task 0 running, task 1 pending")
            slurm.cancel(f"{array}_1")
            returncode = launcher.wait(timeout=300)
        finally:
            if launcher.poll() is None:
                launcher.kill()
    output = (tmp_path / "sweep.log").read_text()
    assert returncode != 0, "a cancelled job makes the sweep fail\n" + output[-2000:]
    assert slurm.state(f"{array}_1").startswith("CANCELLED")
    first, second = (sweep / j["dir"] for j in manifest(sweep)["jobs"])
    assert status(first)["status"] == "done" and status(second)["status"] == "queued"

    listed = run_cli("summarize.py", str(sweep), "--no-counts")
    assert listed.returncode == 1 and f"{second.name}: never started" in listed.stdout

    # The queued job runs what was submitted: the snapshot, not conf/ (changed here in the snapshot,
    # so that the difference shows; the repository's conf/ is left alone).
    smoke = sweep / dirs.CONF_SNAPSHOT / "debug" / "smoke.yaml"
    smoke.write_text(smoke.read_text().replace("num_train: 12", "num_train: 8"))
    done = run_cli("summarize.py", "--resume", str(sweep), timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:] + "\n" + slurm.log_tail()
    assert f"resubmitting 1 job(s) of {sweep}: {second.name}" in done.stdout and "2 of 2 job(s) done" in done.stdout
    assert status(second)["status"] == "done"
    assert yaml.safe_load((second / layout.RESOLVED_CONFIG).read_text())["data"]["num_train"] == 8
    assert yaml.safe_load((first / layout.RESOLVED_CONFIG).read_text())["data"]["num_train"] == 12
    meta = json.loads((second / layout.RUN_META).read_text())
    resubmitted = job_id_of(meta)
    assert resubmitted and not resubmitted.startswith(f"{array}_"), "a new SLURM job, into the same directory"
    assert slurm.state(resubmitted) == "COMPLETED"
    assert sorted(p.name for p in dirs.job_dirs(sweep)) == sorted([first.name, second.name])
