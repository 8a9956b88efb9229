"""Errors whose message says everything a user needs (which file, which key, what was expected).

The command-line scripts print them as one `error:` line and exit 1, without a traceback;
VLM_RESAMPLER_TRACEBACK=1 shows the traceback too. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

TRACEBACK_VARIABLE = "VLM_RESAMPLER_TRACEBACK"


class UserFacingError(Exception):
    """Base of the data, checkpoint and config errors that name their cause."""


class ConfigError(UserFacingError, ValueError):
    """A bad config or command line: a short message, no traceback (exit 2)."""


class OutOfGpuMemory(UserFacingError, RuntimeError):
    """A stage or an eval did not fit its GPU (torch.OutOfMemoryError), with what lowers the peak."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (torch's out-of-memory message runs to a paragraph)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class UnknownResamplerKey(ConfigError):
    """A `resampler.<key>` the chosen resampler type does not take (another type may)."""


def exit_with(err: UserFacingError, doing: str) -> NoReturn:
    """`error: <doing>: <message>` and exit 1; with VLM_RESAMPLER_TRACEBACK=1, raise it instead."""
    if os.environ.get(TRACEBACK_VARIABLE) == "1":
        raise err
    print(
        f"error: {doing}: {err}\n  ({type(err).__name__}; {TRACEBACK_VARIABLE}=1 shows the traceback)",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(1)


@contextmanager
def short_errors(doing: str) -> Iterator[None]:
    """Within the block, a UserFacingError ends the process through exit_with."""
    try:
        yield
    except UserFacingError as err:
        exit_with(err, doing)
