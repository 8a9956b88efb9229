"""A save onto a filesystem without room for it: a small tmpfs mounted by the test (CI runs as root;
elsewhere these tests skip with a reason CI does not accept). The save fails with a message naming
the path and the lack of space, the previous checkpoint stays intact and loadable, nothing is left
that a later load takes for a checkpoint, and a training stopped that way resumes once there is room."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_kill_during_save import holds_iteration, save
from test_resume import ARGS, logged_losses

from vlm_resampler.runs import layout
from vlm_resampler.runs.disk_space import DiskFullError, named_if_out_of_space

from conftest import run_cli

MIB = 1 << 20


@contextmanager
def tmpfs(path: Path, size: int):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def resize(path: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def temporary_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


WRITERS = {
    "safetensors": lambda path: save_file({"x": torch.zeros(MIB)}, str(path)),
    "torch.save": lambda path: torch.save({"x": torch.zeros(MIB)}, path),  # names no cause: "unexpected pos"
    "open().write": lambda path: path.write_bytes(bytes(4 * MIB)),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_write_that_finds_no_space_is_named_whatever_raised_it(tmp_path, writer):
    with tmpfs(tmp_path / "small", 256 * 1024) as root:
        target = root / "weights.bin"
        with pytest.raises(DiskFullError, match=rf"saving: writing {root} failed: no space left on the device"):
            with named_if_out_of_space(root, "saving"):
                WRITERS[writer](target)


def test_features_that_find_no_space_are_served_from_memory_and_leave_nothing(smoke_config, tmp_path, monkeypatch):
    """The feature cache only saves time: a full disk costs the cache, not the stage."""
    from vlm_resampler.data.datasets import prepare_split
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.feature_cache import cached_features, tower_fingerprint
    from vlm_resampler.training.run import resolved_container

    model = build_model(resolved_container(smoke_config())["model"], seed=0).eval()
    images = sorted({str(i["image"]) for i in prepare_split(smoke_config().data, "train")})[:8]
    with tmpfs(tmp_path / "small", 64 * 1024) as root:
        monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(root))
        table = cached_features(model, tower_fingerprint(model.vision), images, 128, 64)
        assert "not saved" in table.source and "no space left" in table.source, table.source
        assert table.features.shape[0] == len(images) and torch.isfinite(table.features).all()
        assert temporary_files(root) == [] and not list(root.rglob("*.safetensors"))


def test_other_write_errors_are_not_taken_for_a_full_disk(tmp_path):
    with pytest.raises(IsADirectoryError):
        with named_if_out_of_space(tmp_path, "saving"):
            tmp_path.write_bytes(b"x")


def test_a_stage_checkpoint_that_does_not_fit_leaves_the_previous_one_loadable(saver, tmp_path, monkeypatch):
    from vlm_resampler import load_from_run
    from vlm_resampler.training import run as run_module

    model, check_model, modules, fields = saver
    with tmpfs(
        tmp_path / "small", 24 * MIB
    ) as root:  # one finetune checkpoint of the smoke model (16.3 MB) fits, two do not
        save(model, modules, fields, root, 0)  # root/stage0 holds iteration 0
        stage_dir = root / "stage0"
        before = {p.name: p.read_bytes() for p in stage_dir.iterdir() if p.is_file()}

        # Checked before anything is written: refused, naming the path and the room it lacks.
        with pytest.raises(
            DiskFullError,
            match=rf"saving the finetune stage's checkpoint: {stage_dir} needs about .* MiB "
            r"and its filesystem has .* MiB free \(no space left on the device\)",
        ):
            save(model, modules, fields, root, 3)
        assert {p.name: p.read_bytes() for p in stage_dir.iterdir() if p.is_file()} == before
        assert holds_iteration(load_from_run(stage_dir), modules, 0)

        # Without the check, the write itself runs out of space: still named, still nothing replaced.
        monkeypatch.setattr(run_module, "require_space", lambda *args: None)
        with pytest.raises(DiskFullError, match=rf"writing {stage_dir} failed: no space left on the device"):
            save(model, modules, fields, root, 3)
        assert {p.name: p.read_bytes() for p in stage_dir.iterdir() if p.is_file()} == before
        assert holds_iteration(load_from_run(stage_dir), modules, 0)
        assert temporary_files(root) == []

        # A first save into a new directory that does not fit leaves no checkpoint there.
        with pytest.raises(DiskFullError):
            save(model, modules, fields, root, 4)  # root/stage1
        assert not layout.is_stage_dir(root / "stage1")
        with pytest.raises(Exception, match=layout.METADATA):
            load_from_run(root / "stage1")
        assert temporary_files(root) == []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli(
        "train.py",
        *ARGS,
        "stage.resampler.save_steps=2",
        "experiment.name=run",
        f"hydra.run.dir={root / 'run'}",
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run"


def test_a_training_that_runs_out_of_space_stops_resumable_and_resumes_once_there_is_room(uninterrupted, tmp_path):
    # The smoke run: vision stage 7.5 MB, a resumable checkpoint of the resampler stage 16.2 MB. In 32 MiB
    # the first (step 2) fits and the second (step 4, written while step 2's is still there) does not.
    with tmpfs(tmp_path / "small", 32 * MIB) as root:
        run_dir = root / "run"
        args = [*ARGS, "stage.resampler.save_steps=2", "experiment.name=run", f"hydra.run.dir={run_dir}"]
        stopped = run_cli("train.py", *args, cwd=tmp_path)
        assert stopped.returncode == 1, stopped.stderr[-3000:]
        assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
        # The progress bar leaves its last line open: the error line starts after it.
        last = [line[line.index("error: ") :] for line in stopped.stderr.splitlines() if "error: " in line]
        assert len(last) == 1, stopped.stderr[-3000:]
        assert last[0].startswith(
            f"error: training {run_dir}: saving the resumable checkpoint of step 4: "
            f"{run_dir}/resampler/resume/checkpoint-4 needs about"
        ), last
        assert (
            "no space left on the device" in last[0]
            and "The run is resumable (completed stages vision; stage resampler at step 2)" in last[0]
        ), last
        status = json.loads((run_dir / layout.STATUS).read_text())
        assert status["status"] == layout.INTERRUPTED and "no space left" in status["reason"]
        resume_dir = run_dir / "resampler" / layout.RESUME_DIR
        assert sorted(p.name for p in resume_dir.iterdir()) == ["checkpoint-2"]  # intact, and nothing half-written
        assert (resume_dir / "checkpoint-2" / layout.RESUME_COMPLETE).is_file()
        assert temporary_files(run_dir) == []

        resize(root, 64 * MIB)
        done = run_cli("train.py", *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "stage resampler: resuming from step 2" in done.stdout
        for stage in ("vision", "resampler"):
            found = load_file(str(run_dir / stage / layout.WEIGHTS))
            expected = load_file(str(uninterrupted / stage / layout.WEIGHTS))
            assert found.keys() == expected.keys()
            assert all(torch.equal(found[k], expected[k]) for k in expected), stage
        assert logged_losses(run_dir / "resampler") == logged_losses(uninterrupted / "resampler")
        assert json.loads((run_dir / layout.STATUS).read_text())["status"] == layout.DONE
