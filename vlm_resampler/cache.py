"""Where locally built artefacts (tiny backbones, converted tokenizers) live, and how they get there.

A build writes into a private sibling directory and is renamed into place only once it has
finished, with a `.complete` marker inside. A killed build therefore leaves at most a
`<dest>.tmp-<pid>` directory behind, never a half-written `<dest>` that a later run would
take for a finished model.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV_VAR = "VLM_RESAMPLER_CACHE"
COMPLETE_MARKER = ".complete"
_TMP_INFIX = ".tmp-"
# The environment variables that choose the kernels' instruction sets and threads when torch loads.
FLOAT_PATH_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def cache_root() -> Path:
    """`$VLM_RESAMPLER_CACHE` if set, else `~/.cache/vlm_resampler` (read on every call, so tests can redirect it)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "vlm_resampler"


def build_host() -> dict:
    """What a pretrained build depends on besides its recipe, for its record: a build is exact on
    one machine, but another CPU's kernels sum floats in another order and the training drifts
    apart (docs/grounding.md, "Builds differ between machines")."""
    import platform

    import torch

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the instruction set ATen dispatches to
        # what set the float path (models/pinned_build.py), MKL's branch included, which nothing else shows
        "float_environment": {name: os.environ[name] for name in FLOAT_PATH_VARIABLES if name in os.environ},
    }


def _cpu_model() -> str:
    import platform

    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere platform's answer
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


def build_atomically(dest: Path, build: Callable[[Path], None]) -> Path:
    """Return `dest`, first running `build(tmp_dir)` and renaming `tmp_dir` to `dest` if it is not complete yet.

    `build` receives an empty directory and must fill it; it must not write the marker.
    Processes that need the same `dest` at once (the jobs of a sweep on a fresh cache, test
    workers) build it once: the others wait on a lock beside it and then find it complete. The
    lock is advisory (flock): a filesystem without it degrades to both building, where the first
    rename wins and the loser discards its identical copy (builds are deterministic).
    """
    if is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(dest):
        if is_complete(dest):  # built by the process that held the lock before us
            return dest
        return _build(dest, build)


@contextmanager
def _build_lock(dest: Path) -> Iterator[None]:
    with open(dest.with_name(f".{dest.name}.lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            yield  # a filesystem without flock: builders race (see build_atomically)
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(dest: Path, build: Callable[[Path], None]) -> Path:
    _remove_abandoned_builds(dest)
    if dest.exists():
        # Only a finished build is ever renamed to `dest`, so an unmarked one was damaged by hand.
        shutil.rmtree(dest)

    tmp_dir = dest.with_name(f"{dest.name}{_TMP_INFIX}{os.getpid()}")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir()
    try:
        build(tmp_dir)
        _make_readable_per_umask(tmp_dir)
        (tmp_dir / COMPLETE_MARKER).write_text(f"built {time.strftime('%Y-%m-%dT%H:%M:%S%z')} by pid {os.getpid()}\n")
        _rename_into_place(tmp_dir, dest)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    return dest


def _rename_into_place(tmp_dir: Path, dest: Path) -> None:
    try:
        os.replace(tmp_dir, dest)
    except OSError as error:
        lost_race = error.errno in (errno.ENOTEMPTY, errno.EEXIST) and is_complete(dest)
        if not lost_race:
            raise


def _make_readable_per_umask(directory: Path) -> None:
    """transformers 5 writes model.safetensors with mode 0600; a cache shared between users needs umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for file in directory.rglob("*"):
        if file.is_file():
            file.chmod(0o666 & ~umask)


def _remove_abandoned_builds(dest: Path) -> None:
    """Delete `<dest>.tmp-<pid>` directories whose process is gone (a build that was killed)."""
    for candidate in dest.parent.glob(f"{dest.name}{_TMP_INFIX}*"):
        pid_text = candidate.name.rsplit(_TMP_INFIX, 1)[1]
        if pid_text.isdigit() and not _process_is_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
