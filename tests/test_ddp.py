"""Multi-process training inside one job: `torchrun --nproc_per_node=2 launch/train.py ...` runs DDP
(gloo on CPU) and ends with the weights of one process at the same global batch; only rank 0
writes files; a stopped DDP run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_resume import logged_step, wait_for

from vlm_resampler.runs import layout

from conftest import REPO_ROOT, run_cli

# Dropout off: each process draws its own dropout masks, so with dropout the runs differ.
# One thread per process, so that two processes fit the machine.
ARGS = [
    "debug=smoke",
    "stages=[vision,resampler]",
    "resampler.dropout=0.0",
    "stage.resampler.max_steps=6",
    "num_threads=1",
]
# VICReg is invariant to a shift of the overlap head's output, so the gradient of its last bias is
# zero up to float rounding; Adam turns that rounding noise into steps of up to lr each. Its value
# differs between any two reduction orders, by at most lr per step (vision: 2 steps of lr <= 5e-4).
ROUNDING_DRIVEN = {"overlap_head.layers.2.bias": 2 * 5e-4}


def torchrun(*args: str, cwd: Path, nproc: int = 2, timeout: float = 400.0, popen: bool = False):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(REPO_ROOT / "launch" / "train.py"),
        *args,
    ]
    # torch's elastic agent leaves a log dir (tempfile.mkdtemp) per run; in the test's own dir it
    # goes with pytest's cleanup instead of piling up in /tmp.
    env = os.environ | {"TMPDIR": str(cwd)}
    if popen:
        return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_close_weights(found_dir: Path, expected_dir: Path, atol: float = 1e-5) -> None:
    expected = load_file(str(expected_dir / layout.WEIGHTS))
    found = load_file(str(found_dir / layout.WEIGHTS))
    assert set(found) == set(expected)
    for key in expected:
        difference = (found[key] - expected[key]).abs().max().item()
        assert difference <= ROUNDING_DRIVEN.get(key, atol), f"{key}: differs by {difference:.3g}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    done = run_cli("train.py", *ARGS, "experiment.name=one", f"hydra.run.dir={root / 'one'}", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "one"


def test_two_processes_end_with_the_weights_of_one_at_the_same_global_batch(one_process, tmp_path):
    run_dir = tmp_path / "two"
    done = torchrun(*ARGS, "experiment.name=two", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    for stage in ("vision", "resampler"):
        assert_close_weights(run_dir / stage, one_process / stage)
    # The same optimizer steps over the same examples, and the same logged losses.
    for stage in ("vision", "resampler"):
        ours = [json.loads(line) for line in (run_dir / stage / layout.TRAIN_LOG).read_text().splitlines()]
        theirs = [json.loads(line) for line in (one_process / stage / layout.TRAIN_LOG).read_text().splitlines()]
        assert [r["step"] for r in ours] == [r["step"] for r in theirs]
        losses = [[r["loss"] for r in records if "loss" in r] for records in (ours, theirs)]
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # Only rank 0 writes: one set of files, one report line per stage, no log line of rank 1.
    assert done.stdout.count("stage resampler: 6 steps, final loss") == 1
    assert "process 0 of 2" in (run_dir / "train.log").read_text()
    assert "process 1 of 2" not in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / layout.STATUS).read_text())["status"] == layout.DONE
    assert not list(run_dir.rglob(layout.RESUME_DIR))


def test_a_lora_finetune_on_two_processes_ends_with_the_weights_of_one(tmp_path):
    """The finetune stage (LoRA on the LLM) under DDP: its adapter and the rest of what it trains
    end as one process's (3e-8 apart here, 7 Dec)."""
    finetune = ["debug=smoke", "stages=[finetune]", "resampler.dropout=0.0", "num_threads=1"]
    one = run_cli("train.py", *finetune, "experiment.name=one", f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    done = torchrun(*finetune, "experiment.name=two", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_close_weights(tmp_path / "two" / "finetune", tmp_path / "one" / "finetune")
    adapter = Path(layout.ADAPTER_DIR) / layout.ADAPTER_WEIGHTS
    ours, theirs = (load_file(str(tmp_path / run / "finetune" / adapter)) for run in ("two", "one"))
    assert set(ours) == set(theirs) and any("lora_B" in key for key in ours)
    # LoRA's B starts at zero: that it moved makes the comparison mean something
    assert max(theirs[key].abs().max().item() for key in theirs if "lora_B" in key) > 1e-4
    for key in theirs:
        assert (ours[key] - theirs[key]).abs().max().item() <= 1e-5, key


@pytest.mark.slow
def test_a_ddp_run_stopped_by_sigterm_resumes_to_the_weights_of_one_process(one_process, tmp_path):
    run_dir = tmp_path / "two"
    args = [*ARGS, "experiment.name=two", f"hydra.run.dir={run_dir}"]
    proc = torchrun(*args, cwd=tmp_path, popen=True)
    wait_for(lambda: logged_step(run_dir / "resampler", 2), proc, "step 2 of the resampler stage")
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert "SIGTERM: stage resampler stopped at step" in err, err[-3000:]
    checkpoint = run_dir / "resampler" / layout.RESUME_DIR
    rng_files = sorted(p.name for p in checkpoint.glob("checkpoint-*/rng_state_*.pth"))
    assert rng_files == ["rng_state_0.pth", "rng_state_1.pth"]  # the Trainer's per-rank RNG state

    done = torchrun(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "stage resampler: resuming from step" in done.stdout
    assert_close_weights(run_dir / "resampler", one_process / "resampler")


PROCESS_GROUP_AT_EXIT = """
import atexit, os, pathlib, torch
# Registered first, so it runs last (atexit is last-in first-out): what teardown is left with.
atexit.register(lambda: pathlib.Path(f"alive_at_exit_{os.environ['RANK']}").write_text(str(torch.distributed.is_initialized())))
from vlm_resampler.training import distributed
distributed.init_process_group()
distributed.barrier()
"""


def test_each_process_leaves_the_process_group_before_interpreter_teardown(tmp_path):
    # Gloo's threads torn down with the interpreter aborted a finished DDP run once in CI (SIGABRT,
    # "terminate called without an active exception"); the group is destroyed at exit instead.
    script = tmp_path / "group_at_exit.py"
    script.write_text(PROCESS_GROUP_AT_EXIT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(tmp_path)}  # TMPDIR: as in torchrun()
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    alive = {path.name: path.read_text() for path in tmp_path.glob("alive_at_exit_*")}
    assert alive == {"alive_at_exit_0": "False", "alive_at_exit_1": "False"}


def test_torchrun_needs_a_run_name(tmp_path):
    done = torchrun("debug=smoke", cwd=tmp_path, timeout=120)
    assert done.returncode != 0
    assert "under torchrun give the run a name (experiment.name=NAME)" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_the_global_batch_must_split_evenly_over_the_processes(monkeypatch):
    from vlm_resampler.training.distributed import per_process_batch

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert per_process_batch(8, "vision") == 4
    with pytest.raises(ValueError, match=r"stage.vision.batch_size=3 is the global batch .* multiple of 2"):
        per_process_batch(3, "vision")


@pytest.mark.slurm
def test_two_slurm_tasks_train_like_one_process(slurm, one_process, tmp_path):
    """hydra/launcher=slurm with tasks_per_node=2: submitit starts two tasks; they export the
    torch.distributed variables from SLURM's (submitit's TorchDistributedEnvironment) and run DDP."""
    from vlm_resampler.sweeps import dirs

    from slurm_cluster import unique_job_name

    name = unique_job_name("ddp")
    sweep = tmp_path / "multirun" / "ddp"
    done = run_cli(
        "train.py",
        "-m",
        *slurm.launcher_overrides(name, tasks_per_node=2),
        *ARGS,
        "experiment.name=two",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:] + "\n" + slurm.log_tail()
    (job_dir,) = dirs.job_dirs(sweep)
    for stage in ("vision", "resampler"):
        assert_close_weights(job_dir / stage, one_process / stage)
    logs = "".join(p.read_text(errors="replace") for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "process 0 of 2" in logs and "process 1 of 2" in logs
    assert "process 1 of 2" not in (job_dir / "train.log").read_text()
