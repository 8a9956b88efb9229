"""Resuming a run where it stopped: after a kill, a signal, a SLURM preemption or time limit.

Two levels, both in the run's own directory:
- stages that completed (listed in status.json's `completed` and holding their
  checkpoint_metadata.json) are skipped;
- the stage that was training continues from its last resumable checkpoint: the Trainer's own
  `<stage>/resume/checkpoint-<step>/` (trainable weights, optimizer, scheduler, RNG states,
  step and data position), written every `stage.<name>.save_steps` optimizer steps and when a
  stop signal arrives. A checkpoint counts once it holds a `.complete` marker, written after
  every process wrote its part and the files are on disk; the older ones are then removed. The
  whole resume/ folder goes when the stage completes.

Resuming requires the identical resolved config (the Trainer itself replays the data order:
seeded sampler, consumed batches skipped).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from vlm_resampler.runs import layout
from vlm_resampler.runs.atomic import write_text
from vlm_resampler.runs.locate import completed, read_status
from vlm_resampler.training import distributed

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# ---- one stage: the Trainer's checkpoints ---------------------------------------------------
def _checkpoints(resume_dir: Path) -> list[tuple[int, Path]]:
    if not resume_dir.is_dir():
        return []
    found = []
    for path in resume_dir.iterdir():
        match = CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / layout.RESUME_COMPLETE).is_file()


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete resumable checkpoint of a stage, or None."""
    complete = [path for _, path in _checkpoints(Path(stage_dir) / layout.RESUME_DIR) if is_complete(path)]
    return complete[-1] if complete else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(CHECKPOINT.match(Path(checkpoint).name).group(1))


def mark_complete(checkpoint: Path) -> None:
    """Flush every file of a checkpoint to disk, then write its marker (atomically)."""
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
    write_text(checkpoint / layout.RESUME_COMPLETE, f"{checkpoint.name}\n")


def remove_other_checkpoints(resume_dir: Path, keep: Path | None) -> None:
    """Every checkpoint but `keep`: older complete ones, and incomplete ones (an interrupted save)."""
    for _, path in _checkpoints(resume_dir):
        if keep is None or path.resolve() != Path(keep).resolve():
            shutil.rmtree(path)


def remove_resume_dir(stage_dir: Path) -> None:
    resume_dir = Path(stage_dir) / layout.RESUME_DIR
    if resume_dir.exists():
        shutil.rmtree(resume_dir)


class ResumableCheckpoints(TrainerCallback):
    """After each save of the Trainer: once every process wrote its part, rank 0 marks the
    checkpoint complete and removes the others, so one complete checkpoint always remains."""

    def on_save(self, args, state, control, **kwargs):
        distributed.barrier()
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            mark_complete(checkpoint)
            remove_other_checkpoints(Path(args.output_dir), keep=checkpoint)
        distributed.barrier()


# ---- one run: which stages are done, and whether it may be resumed --------------------------
def completed_stages(run_dir: Path, stages: list[str]) -> list[str]:
    """Stages of `stages` that a previous attempt completed (in status.json and with metadata)."""
    return [s for s in stages if completed(run_dir, s) and layout.is_stage_dir(Path(run_dir) / s)]


def saved_progress(run_dir: Path, stages: list[str]) -> str:
    """What a resumed run continues from, in words."""
    done = completed_stages(run_dir, stages)
    parts = [f"completed stages {', '.join(done)}"] if done else []
    for name in stages:
        if name in done:
            continue
        checkpoint = latest_checkpoint(Path(run_dir) / name)
        if checkpoint is not None:
            parts.append(f"stage {name} at step {checkpoint_step(checkpoint)}")
        break
    return "; ".join(parts) if parts else "nothing saved yet: it starts again from its first stage"


# Where results are reported, not what is trained: a run may resume with other values (or with
# them missing, a run begun before they existed).
REPORTING_KEYS = ("logger", "optimized_metric")


def config_differences(run_dir: Path, resolved: dict) -> list[str]:
    """Keys where `resolved` differs from the run's saved resolved_config.yaml, with both values
    (REPORTING_KEYS aside)."""
    from omegaconf import OmegaConf

    from vlm_resampler.runs.tree_diff import tree_differences

    path = Path(run_dir) / layout.RESOLVED_CONFIG
    if not path.is_file():
        return []
    saved = OmegaConf.to_container(OmegaConf.load(path))
    here = {k: v for k, v in resolved.items() if k not in REPORTING_KEYS}
    return tree_differences(here, {k: v for k, v in saved.items() if k not in REPORTING_KEYS})


def different_config_message(run_dir: Path, differences: list[str]) -> str:
    return (
        f"{run_dir} holds an unfinished run with another config: it resumes only with the same config "
        f"(or train under another experiment.name). Differences (here vs the run's {layout.RESOLVED_CONFIG}):\n  "
        + "\n  ".join(differences[:20])
    )


def resume_point(run_dir: Path, resolved: dict, stages: list[str]) -> list[str]:
    """The stages an earlier attempt completed when `run_dir` already holds a run of the same
    config ([] for a new run); a different config is refused, naming the differing keys.

    (Which runs may be continued from the command line is check_run_dir_free's decision: an
    unfinished one. Here a finished run is continued too, as a no-op: a SLURM job requeued just
    as it ended must not train again.)"""
    status = read_status(run_dir)
    if status is None or not (Path(run_dir) / layout.RESOLVED_CONFIG).is_file():
        return []  # nothing started here yet (a sweep job's directory is created "queued")
    differences = config_differences(run_dir, resolved)
    if differences:
        raise ValueError(different_config_message(run_dir, differences))
    if distributed.is_main_process():
        print(f"resuming {run_dir} (status {status.get('status')}): {saved_progress(run_dir, stages)}", flush=True)
    return completed_stages(run_dir, stages)


def lock_holder(run_dir: Path) -> str | None:
    """Who holds the run's training lock (a live process training into it), or None."""
    path = Path(run_dir) / layout.LOCK
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@contextmanager
def training_lock(run_dir: Path) -> Iterator[None]:
    """Held by the (rank 0) process that trains into `run_dir`; released when it exits, however."""
    import platform

    path = Path(run_dir) / layout.LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise RuntimeError(
                f"{run_dir}: another process is training into this run ({handle.read().strip()}); "
                "wait for it to end, or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
