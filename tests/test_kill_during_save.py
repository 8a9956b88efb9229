"""Issue 7, item 1: a process killed (SIGKILL) at a random point while it saves checkpoints never
loses the previous complete one, and nothing half-written is ever taken as a checkpoint.

The child is forked from the test process (the model is already built there, so a trial costs
milliseconds, not an interpreter start) and runs the real save path, training.run's
save_stage_checkpoint: model.safetensors, adapter/adapter_model.safetensors, then
checkpoint_metadata.json, each atomically. It saves iteration after iteration into three stage
directories in turn (so it also overwrites complete checkpoints) and logs each finished iteration;
the parent kills it after a random delay and then checks every directory on disk."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from vlm_resampler import load_from_run
from vlm_resampler.errors import UserFacingError
from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch, load_weights, verify_files
from vlm_resampler.runs.metadata import read_metadata

STAGE_DIRS = 3  # iteration i goes to stage dir i % 3


def marked_parameters(model, modules):
    """The saved parameters: those of the saved modules and the LoRA ones."""
    for name in modules:
        yield from getattr(model, name).parameters()
    for name, p in model.llm.named_parameters():
        if "lora_" in name:
            yield p


def set_iteration(model, modules, i: int) -> None:
    # Element assignment only: no parallel kernels in a forked child.
    with torch.no_grad():
        for p in marked_parameters(model, modules):
            p.view(-1)[0] = float(i)


def holds_iteration(model, modules, i: int) -> bool:
    return all(p.view(-1)[0] == torch.tensor(float(i)).to(p.dtype) for p in marked_parameters(model, modules))


def save(model, modules, fields, root: Path, i: int) -> None:
    from vlm_resampler.training.run import save_stage_checkpoint

    set_iteration(model, modules, i)
    save_stage_checkpoint(model, root / f"stage{i % STAGE_DIRS}", modules, **fields, train_summary={"iteration": i})


def child(model, modules, fields, root: Path, start: int, progress: Path) -> None:
    fd = os.open(progress, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    i = start
    while True:
        save(model, modules, fields, root, i)
        os.write(fd, f"{i}\n".encode())
        i += 1


def logged(progress: Path) -> list[int]:
    text = progress.read_text() if progress.exists() else ""
    return [int(line) for line in text.split("\n")[:-1]]  # a line without its newline is not logged


def check_directory(stage_dir: Path, check_model, modules) -> int | None:
    """The iteration a stage dir holds when it is a checkpoint (metadata present), after checking
    it completely; None when it is not one. Raises when it claims to be one and is not."""
    if not layout.is_stage_dir(stage_dir):
        return None
    meta = read_metadata(stage_dir)  # valid JSON of our format, never a torn file
    verify_files(stage_dir, meta["weights_sha256"])  # sha256 of every weight file
    load_weights(check_model, stage_dir, meta["saved_modules"])  # strict: every key, shape, dtype
    iteration = meta["train"]["iteration"]
    assert holds_iteration(check_model, modules, iteration), f"{stage_dir}: weights are not iteration {iteration}'s"
    return iteration


def run_trials(saver, root: Path, trials: int, seed: int) -> dict:
    model, check_model, modules, fields = saver
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    save(model, modules, fields, root, 0)  # the first complete checkpoint, before any kill
    save_s = time.perf_counter() - t0
    progress = root / "progress.txt"
    progress.write_text("0\n")
    counts = {
        "trials": trials,
        "nothing_lost": 0,
        "killed_mid_save_with_temp_left": 0,
        "left_behind_and_refused": 0,
        "save_s": round(save_s, 4),
    }
    failures = []
    seen_leftovers: set[Path] = set()
    for trial in range(trials):
        done = logged(progress)
        start = done[-1] + 1
        pid = os.fork()
        if pid == 0:  # the child: save until killed
            try:
                child(model, modules, fields, root, start, progress)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0, 4 * save_s))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"trial {trial}: child ended early ({status})"
        )

        done = logged(progress)
        last = done[-1]
        problems = []
        held = {}
        for k in range(STAGE_DIRS):
            stage_dir = root / f"stage{k}"
            try:
                held[k] = check_directory(stage_dir, check_model, modules)
            except (CheckpointMismatch, ValueError, AssertionError, OSError) as err:
                problems.append(f"stage{k} claims to be a checkpoint but is not: {err}")
        # Every other directory the kill left (a stage dir it was saving into, a temporary adapter
        # dir) is refused by the public load, naming it, before any model is built.
        unfinished = [
            root / f"stage{k}" for k in range(STAGE_DIRS) if held.get(k) is None and (root / f"stage{k}").exists()
        ]
        for directory in unfinished + [p for p in root.rglob("*.tmp-*") if p.is_dir()]:
            try:
                load_from_run(directory)
                problems.append(f"{directory} is no checkpoint, yet it loaded")
            except UserFacingError as err:
                counts["left_behind_and_refused"] += 1
                if str(directory) not in str(err):
                    problems.append(f"{directory} refused without naming it: {err}")
        # The previous complete checkpoints (the last logged iterations) are there, intact.
        for i in range(max(0, last - STAGE_DIRS + 2), last + 1):
            if held.get(i % STAGE_DIRS) != i:
                problems.append(
                    f"iteration {i} (logged complete) lost: stage{i % STAGE_DIRS} holds {held.get(i % STAGE_DIRS)}"
                )
        # Whatever the kill left behind under a temporary name is never what a load reads.
        leftovers = {p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name}
        if leftovers - seen_leftovers:
            counts["killed_mid_save_with_temp_left"] += 1
        seen_leftovers |= leftovers
        # The next save into a directory clears what a killed one left there (the .saving marker's
        # temporary file too): temporary files never pile up, so each directory holds at most the
        # leftovers of one save (one process id).
        savers: dict[Path, set[str]] = {}
        for p in leftovers:
            savers.setdefault(p.parent, set()).add(p.name.rsplit("-", 1)[1])
        assert all(len(pids) == 1 for pids in savers.values()), sorted(str(p.relative_to(root)) for p in leftovers)
        for k in range(STAGE_DIRS):
            meta_path = root / f"stage{k}" / layout.METADATA
            if meta_path.is_file():
                recorded = json.loads(meta_path.read_text())["weights_sha256"]
                assert all(".tmp-" not in rel for rel in recorded)
        if problems:
            failures.append((trial, problems))
        else:
            counts["nothing_lost"] += 1
    counts["iterations_completed"] = logged(progress)[-1]
    counts["failures"] = failures[:5]
    return counts


def report(counts: dict, root: Path) -> None:
    line = (
        f"kill-during-save: {counts['nothing_lost']}/{counts['trials']} trials with nothing lost "
        f"({counts['iterations_completed']} checkpoints completed, one save {counts['save_s']} s, "
        f"{counts['killed_mid_save_with_temp_left']} kills landed between a save's first byte and its rename, "
        f"{counts['left_behind_and_refused']} unfinished directories refused by load_from_run)"
    )
    print(line)
    (root / "kill_test_counts.json").write_text(json.dumps(counts, indent=2))


def test_sigkill_during_save_never_loses_the_previous_checkpoint(saver, tmp_path):
    counts = run_trials(saver, tmp_path / "run", trials=40, seed=7)
    report(counts, tmp_path)
    assert counts["nothing_lost"] == counts["trials"], counts["failures"]
    assert counts["iterations_completed"] > 5, "the kills must land during saving, after some saves completed"
    # A new temporary file (its name holds the killed child's pid) proves the kill landed mid-save.
    assert counts["killed_mid_save_with_temp_left"] >= 10, counts  # 28 of 40 measured
    assert counts["left_behind_and_refused"] >= 5, counts


@pytest.mark.slow
def test_sigkill_during_save_300_trials(saver, tmp_path):
    counts = run_trials(saver, tmp_path / "run", trials=300, seed=300)
    report(counts, tmp_path)
    assert counts["nothing_lost"] == counts["trials"], counts["failures"]
    assert counts["killed_mid_save_with_temp_left"] >= 75, counts


def test_eval_refuses_a_directory_a_killed_save_left_naming_it(saver, tmp_path):
    from conftest import run_cli

    root = tmp_path / "run"
    for seed in range(40):  # kills until one leaves a stage dir that is no checkpoint (most do)
        run_trials(saver, root, trials=1, seed=seed)
        unfinished = [d for d in root.glob("stage*") if not layout.is_stage_dir(d)]
        if unfinished:
            break
    assert unfinished, "no kill left an unfinished stage dir in 40 tries"
    done = run_cli("eval.py", f"checkpoint_dir={unfinished[0]}", cwd=tmp_path, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert str(unfinished[0]) in done.stderr, done.stderr[-3000:]


def test_a_save_clears_every_temporary_name_a_killed_save_can_leave(saver, tmp_path):
    """Each file a save writes goes through a temporary name (the .saving marker's too: CI once found
    five '..saving.tmp-<pid>' files piled up in one stage dir); the next save into the directory
    removes them all, and what it writes is a complete checkpoint."""
    model, check_model, modules, fields = saver
    stage_dir = tmp_path / "run" / "stage0"
    save(model, modules, fields, tmp_path / "run", 0)
    killed = [
        f".{name}.{kind}-{pid}"
        for name in (layout.WEIGHTS, layout.METADATA, layout.SAVING)
        for kind in ("tmp", "old")
        for pid in (101, 102)
    ]
    for name in killed:
        (stage_dir / name).write_text("torn")
    (stage_dir / f".{layout.ADAPTER_DIR}.tmp-103").mkdir()
    (stage_dir / f".{layout.ADAPTER_DIR}.tmp-103" / "adapter_model.safetensors").write_text("torn")
    save(model, modules, fields, tmp_path / "run", 3)
    assert not [p.name for p in stage_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert check_directory(stage_dir, check_model, modules) == 3


def test_after_the_kills_the_newest_checkpoint_loads_through_load_from_run(saver, tmp_path):
    """The public path too: a run dir left by killed saves loads its newest complete stage."""
    model, check_model, modules, fields = saver
    run_trials(saver, tmp_path / "run", trials=3, seed=3)
    newest = max(
        (check_directory(d, check_model, modules), d)
        for d in (tmp_path / "run").glob("stage*")
        if layout.is_stage_dir(d)
    )[1]
    loaded = load_from_run(newest)
    assert holds_iteration(loaded, modules, read_metadata(newest)["train"]["iteration"])


def test_atomic_writes_fsync_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    from vlm_resampler.runs import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    target = tmp_path / "status.json"
    atomic.write_json(target, {"status": "done"})
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "rename", "fsync"], events
    assert Path(events[0][1]).name.startswith(".status.json.tmp-")  # the temp file, before the rename
    assert events[1][2] == str(target)
    assert events[2][1] == str(tmp_path)  # the directory, after the rename
    assert json.loads(target.read_text()) == {"status": "done"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]

    # A directory written atomically: its files and the directory itself are synced before the swap.
    events.clear()
    with atomic.atomic_dir(tmp_path / "adapter") as tmp:
        (tmp / "a.safetensors").write_bytes(b"x")
    synced = [Path(e[1]).name for e in events if e[0] == "fsync"]
    assert synced[0] == "a.safetensors" and synced[-1] == tmp_path.name
    assert any(name.startswith(".adapter.tmp-") for name in synced)


def test_a_value_that_cannot_be_serialised_leaves_the_file_untouched(tmp_path):
    from vlm_resampler.runs.atomic import write_json

    target = tmp_path / "status.json"
    write_json(target, {"status": "running"})
    with pytest.raises(TypeError):
        write_json(target, {"status": object()})
    assert json.loads(target.read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
