"""Resuming a run: after SIGKILL from its last resumable checkpoint, after SIGUSR2/SIGTERM from the
checkpoint saved at the next step boundary; completed stages are skipped, and the final weights
equal those of an uninterrupted run with the same seed. Resuming with another config is refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from vlm_resampler.runs import layout
from vlm_resampler.training import resume
from vlm_resampler.training.run import resolved_container

from conftest import REPO_ROOT, run_cli

# Two stages, so that a resumed run also skips a completed one; the resampler stage is long
# enough to be interrupted in the middle.
ARGS = ["debug=smoke", "stages=[vision,resampler]", "stage.resampler.max_steps=6"]


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "launch" / "train.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def logged_step(stage_dir: Path, step: int) -> bool:
    path = stage_dir / layout.TRAIN_LOG
    return path.is_file() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines() if line)


def logged_losses(stage_dir: Path) -> list[float]:
    records = map(json.loads, (stage_dir / layout.TRAIN_LOG).read_text().splitlines())
    return [r["loss"] for r in records if "loss" in r]


def assert_same_weights(found_dir: Path, expected_dir: Path) -> None:
    expected = load_file(str(expected_dir / layout.WEIGHTS))
    found = load_file(str(found_dir / layout.WEIGHTS))
    assert set(found) == set(expected)
    for key in expected:
        assert torch.equal(found[key], expected[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    run_dir = root / "run"
    done = run_cli(
        "train.py", *ARGS, "stage.resampler.save_steps=2", "experiment.name=run", f"hydra.run.dir={run_dir}", cwd=root
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_and_ends_with_the_same_weights(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    args = [*ARGS, "stage.resampler.save_steps=2", "experiment.name=run", f"hydra.run.dir={run_dir}"]
    proc = start_cli(*args, cwd=tmp_path)
    first = run_dir / "resampler" / layout.RESUME_DIR / "checkpoint-2" / layout.RESUME_COMPLETE
    wait_for(first.is_file, proc, "the first resumable checkpoint of the resampler stage")
    time.sleep(random.Random(os.getpid()).uniform(0, 0.3))  # a random moment after it (a step takes ~0.4 s here)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    if json.loads((run_dir / layout.STATUS).read_text())["status"] == layout.DONE:
        pytest.fail("the run finished before the kill landed")
    saved = resume.latest_checkpoint(run_dir / "resampler")

    started = time.perf_counter()
    done = run_cli("train.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"resumed run: {time.perf_counter() - started:.1f} s")
    assert "stage vision: completed by an earlier attempt, skipped" in done.stdout
    assert f"stage resampler: resuming from step {resume.checkpoint_step(saved)} " in done.stdout, done.stdout[-2000:]
    assert_same_weights(run_dir / "resampler", uninterrupted / "resampler")
    assert_same_weights(run_dir / "vision", uninterrupted / "vision")
    # The resumed stage's log is the uninterrupted one (the lines after the checkpoint were replaced).
    assert logged_losses(run_dir / "resampler") == pytest.approx(logged_losses(uninterrupted / "resampler"), abs=1e-6)
    assert json.loads((run_dir / layout.STATUS).read_text())["status"] == layout.DONE
    assert not (run_dir / "resampler" / layout.RESUME_DIR).exists()


@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGUSR2, marks=pytest.mark.slow), signal.SIGTERM], ids=["SIGUSR2", "SIGTERM"]
)
def test_a_stop_signal_saves_at_the_next_step_and_exits_then_the_rerun_resumes(uninterrupted, tmp_path, sig):
    run_dir = tmp_path / "run"
    # No periodic save: the only checkpoint is the one the signal asks for.
    args = [*ARGS, "stage.resampler.save_steps=100", "experiment.name=run", f"hydra.run.dir={run_dir}"]
    proc = start_cli(*args, cwd=tmp_path)
    wait_for(lambda: logged_step(run_dir / "resampler", 2), proc, "step 2 of the resampler stage")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert f"received {sig.name}: training stops at the next step boundary" in err
    assert (
        f"{sig.name}: stage resampler stopped at step" in err
        and "run the same command again with experiment.name=run to resume" in err
    )
    status = json.loads((run_dir / layout.STATUS).read_text())
    assert status["status"] == layout.INTERRUPTED and status["completed"] == ["vision"]
    checkpoint = resume.latest_checkpoint(run_dir / "resampler")
    assert checkpoint is not None and 2 <= resume.checkpoint_step(checkpoint) < 6
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name

    done = run_cli("train.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"stage resampler: resuming from step {resume.checkpoint_step(checkpoint)}" in done.stdout
    assert_same_weights(run_dir / "resampler", uninterrupted / "resampler")


def write_unfinished_run(run_dir: Path, cfg, status: str = layout.INTERRUPTED) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / layout.RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(resolved_container(cfg)))
    (run_dir / layout.STATUS).write_text(json.dumps({"status": status, "stages": ["vision"], "completed": []}))


def test_resuming_with_another_config_is_refused_naming_the_keys(smoke_config, tmp_path):
    run_dir = tmp_path / "runs" / "taken"
    write_unfinished_run(run_dir, smoke_config("experiment.name=taken", "stage.resampler.lr=0.5", "seed=3"))
    done = run_cli("train.py", "debug=smoke", "experiment.name=taken", cwd=tmp_path)
    assert done.returncode == 2
    assert "resumes only with the same config" in done.stderr
    assert "stage.resampler.lr: 0.001 here, 0.5 in the checkpoint" in done.stderr
    assert "seed: 0 here, 3 in the checkpoint" in done.stderr
    assert json.loads((run_dir / layout.STATUS).read_text())["status"] == layout.INTERRUPTED


def test_a_run_a_live_process_trains_into_is_not_resumed_beside_it(smoke_config, tmp_path):
    run_dir = tmp_path / "runs" / "busy"
    write_unfinished_run(run_dir, smoke_config("experiment.name=busy"), status=layout.RUNNING)
    with resume.training_lock(run_dir):
        done = run_cli("train.py", "debug=smoke", "experiment.name=busy", cwd=tmp_path)
    assert done.returncode == 2
    assert "a process is still training into this run" in done.stderr and f"pid {os.getpid()}" in done.stderr


def test_the_lock_of_a_killed_process_is_recognised_as_stale_and_the_run_resumes(smoke_config, tmp_path):
    import platform

    overrides = ["debug=smoke", "experiment.name=stale", "stages=[vision]"]
    run_dir = tmp_path / "runs" / "stale"
    write_unfinished_run(run_dir, smoke_config(*overrides[1:]), status=layout.RUNNING)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom vlm_resampler.training.resume import training_lock\n"
            f"with training_lock(Path({str(run_dir)!r})):\n    print('locked', flush=True)\n    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert resume.lock_holder(run_dir) == f"pid {holder.pid} on {platform.node()}"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # The file still names the dead process; the lock itself died with it.
    assert f"pid {holder.pid}" in (run_dir / layout.LOCK).read_text() and resume.lock_holder(run_dir) is None
    done = run_cli("train.py", *overrides, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {run_dir}" in done.stdout
    assert json.loads((run_dir / layout.STATUS).read_text())["status"] == layout.DONE


@pytest.mark.parametrize("status", [layout.DONE, layout.FAILED])
def test_a_finished_or_failed_run_is_not_resumed(smoke_config, tmp_path, status):
    run_dir = tmp_path / "runs" / "ended"
    write_unfinished_run(run_dir, smoke_config("experiment.name=ended"), status=status)
    done = run_cli("train.py", "debug=smoke", "experiment.name=ended", cwd=tmp_path)
    assert done.returncode == 2
    assert f"already holds a run (status '{status}')" in done.stderr


def test_a_run_whose_status_is_damaged_is_refused_by_name_not_resumed(smoke_config, tmp_path):
    run_dir = tmp_path / "runs" / "damaged"
    write_unfinished_run(run_dir, smoke_config("experiment.name=damaged"))
    (run_dir / layout.STATUS).write_text('{"status": "runn')  # cut short
    done = run_cli("train.py", "debug=smoke", "experiment.name=damaged", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        f"runs/damaged/{layout.STATUS} is not valid JSON" in done.stderr
        and "choose another experiment.name" in done.stderr
    )
    assert (run_dir / layout.STATUS).read_text() == '{"status": "runn', "the damaged file is left as it was"


def test_only_complete_checkpoints_count_and_the_others_are_removed(tmp_path):
    stage_dir = tmp_path / "resampler"
    for step, complete in ((2, True), (4, True), (6, False)):
        checkpoint = stage_dir / layout.RESUME_DIR / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text("{}")
        if complete:
            resume.mark_complete(checkpoint)
    latest = resume.latest_checkpoint(stage_dir)
    assert latest.name == "checkpoint-4" and resume.checkpoint_step(latest) == 4
    resume.remove_other_checkpoints(stage_dir / layout.RESUME_DIR, keep=latest)
    assert sorted(p.name for p in (stage_dir / layout.RESUME_DIR).iterdir()) == ["checkpoint-4"]
    resume.remove_resume_dir(stage_dir)
    assert resume.latest_checkpoint(stage_dir) is None


def test_the_log_of_a_resumed_stage_keeps_the_lines_up_to_its_checkpoint(tmp_path):
    from vlm_resampler.training.trainer import JsonlLog

    path = tmp_path / layout.TRAIN_LOG
    path.write_text("".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in (1, 2, 3, 4)))
    journal = JsonlLog(path, resume_step=2)
    assert [r["step"] for r in journal.records] == [1, 2]
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    JsonlLog(path)  # a new stage starts a new log
    assert path.read_text() == ""


def test_a_resumable_checkpoint_holds_the_trainable_weights_and_loads_strictly(tmp_path):
    from torch import nn
    from transformers import TrainingArguments

    from vlm_resampler.runs.checkpoint import CheckpointMismatch
    from vlm_resampler.training.trainer import StageObjective, StageTrainer

    model = nn.Module()
    model.frozen, model.trained = nn.Linear(3, 3), nn.Linear(3, 2)
    model.frozen.requires_grad_(False)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = StageTrainer(model=StageObjective(model, "next_token"), args=args)
    trainer._save(str(tmp_path / "checkpoint-1"))
    saved = load_file(str(tmp_path / "checkpoint-1" / "model.safetensors"))
    assert sorted(saved) == ["model.trained.bias", "model.trained.weight"]

    with torch.no_grad():
        model.trained.weight.zero_()
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    assert torch.equal(model.trained.weight, saved["model.trained.weight"])

    model.trained = nn.Linear(3, 4)  # another shape: refused by name
    with pytest.raises(CheckpointMismatch, match="model.trained.weight: model expects shape"):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))


@pytest.mark.slurm
def test_a_slurm_job_signalled_with_usr2_is_requeued_and_ends_like_an_uninterrupted_one(slurm, tmp_path):
    from vlm_resampler.sweeps import dirs

    from slurm_cluster import unique_job_name

    name = unique_job_name("requeue")
    sweep = tmp_path / "multirun" / "requeue"
    # Two jobs of one array that differ only in their name: job 1 is signalled, job 0 is not.
    # No periodic save: what job 1 resumes from is the checkpoint its signal asked for.
    command = [
        sys.executable,
        str(REPO_ROOT / "launch" / "train.py"),
        "-m",
        *slurm.launcher_overrides(name, array_parallelism=2),
        "debug=smoke",
        "stages=[resampler]",
        "num_threads=1",
        "stage.resampler.max_steps=8",
        "stage.resampler.save_steps=100",
        "experiment.name=uninterrupted,signalled",
        f"hydra.sweep.dir={sweep}",
    ]
    with open(tmp_path / "sweep.log", "w") as log:
        launcher = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            array = slurm.wait_for(lambda: slurm.array_id(name), timeout=180, what=f"the array of {name} in squeue")
            jobs = slurm.wait_for(
                lambda: len(dirs.job_dirs(sweep)) == 2 and dirs.job_dirs(sweep), timeout=60, what="job dirs"
            )
            uninterrupted, signalled = jobs
            slurm.wait_for(lambda: logged_step(signalled / "resampler", 2), timeout=300, what="step 2 of job 1")
            done = subprocess.run(["scancel", "--signal=USR2", f"{array}_1"], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            returncode = launcher.wait(timeout=480)
        finally:
            if launcher.poll() is None:
                launcher.kill()
    output = (tmp_path / "sweep.log").read_text()
    assert returncode == 0, output[-3000:] + "\n" + slurm.log_tail()
    assert json.loads((signalled / layout.RUN_META).read_text())["slurm"]["SLURM_RESTART_COUNT"] == "1"
    assert "SLURM_RESTART_COUNT" not in json.loads((uninterrupted / layout.RUN_META).read_text())["slurm"]
    logs = "".join(p.read_text(errors="replace") for p in (sweep / ".submitit").rglob(f"{array}_1_*_log.*"))
    assert "received SIGUSR2: training stops at the next step boundary" in logs
    assert "Requeued job" in logs and "stage resampler: resuming from step" in logs
    for job_dir in (uninterrupted, signalled):
        assert json.loads((job_dir / layout.STATUS).read_text())["status"] == layout.DONE
    assert slurm.final_state(f"{array}_1") == "COMPLETED"
    assert_same_weights(signalled / "resampler", uninterrupted / "resampler")


def test_a_run_resumes_with_another_tracker_or_one_begun_before_trackers_existed(tmp_path):
    """logger and optimized_metric say where results go, not what is trained: they may differ (or be
    missing from a run begun before they existed); any other difference still refuses the resume."""
    import yaml

    from vlm_resampler.training.resume import config_differences

    saved = {"seed": 0, "stage": {"resampler": {"lr": 0.001}}}
    (tmp_path / layout.RESOLVED_CONFIG).write_text(yaml.safe_dump(saved))
    now = saved | {"logger": {"report_to": ["mlflow"]}, "optimized_metric": "val/CIDEr"}
    assert config_differences(tmp_path, now) == []
    assert config_differences(tmp_path, now | {"seed": 1}) == ["seed: 1 here, 0 in the checkpoint"]
