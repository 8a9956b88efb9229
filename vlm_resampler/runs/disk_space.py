"""Saves onto a full disk: checked for room before writing, and named when a write fails for lack
of space, whatever raised it (OSError ENOSPC from Python, safetensors' "os error 28", or torch.save's
"unexpected pos" when its zip writer ran out of room: the latter names no cause, so a failed write
onto a filesystem left with under LOW_WATER_BYTES free counts as out of space too)."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vlm_resampler.errors import UserFacingError

# Beyond the tensors: JSON, the optimizer's and scheduler's small state, the RNG states.
SMALL_FILES_BYTES = 1 << 20
LOW_WATER_BYTES = 1 << 20
OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
OUT_OF_SPACE_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


class DiskFullError(UserFacingError):
    """A save did not fit: names the path, the room it needed or found, and that the previous
    checkpoints were left as they were."""


def existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing_ancestor(path)).free


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def require_space(path: Path, needed: int, what: str) -> None:
    """Raise DiskFullError before anything is written when `path`'s filesystem has less than
    `needed` bytes (plus room for the small files) free."""
    free = free_bytes(path)
    if free < needed + SMALL_FILES_BYTES:
        raise DiskFullError(
            f"{what}: {path} needs about {mib(needed + SMALL_FILES_BYTES)} and its filesystem has {mib(free)} free "
            "(no space left on the device); nothing was written"
        )


def is_out_of_space(err: BaseException) -> bool:
    """True when `err`, or an error it was raised from, says a write found no space."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in OUT_OF_SPACE_ERRNOS:
            return True
        if any(text in str(err) for text in OUT_OF_SPACE_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def named_if_out_of_space(path: Path, what: str) -> Iterator[None]:
    """Within the block, a write that fails for lack of space raises DiskFullError naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        free = free_bytes(path)
        if not (is_out_of_space(err) or free < LOW_WATER_BYTES):
            raise
        raise DiskFullError(
            f"{what}: writing {path} failed: no space left on the device ({mib(free)} free; "
            f"{type(err).__name__}: {err})"
        ) from err
