"""What a single config value may be: a type, bounds and the words an error uses for them.

One declaration serves every check of a value: a component declares its constructor's parameters
as `Annotated[int, AT_LEAST_ONE]` (its typed parameter schema), and `@checks_ranges` refuses a
value outside it when the component is built, which validation does on the meta device before a
run starts; stage values are declared the same way (config/validate.STAGE_VALUE_RANGES). Checks
that relate several values (heads dividing a width) stay in the component's code.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass


class OutOfRange(ValueError):
    """A value its declared Range refuses; `key` is the config key it was given as."""

    def __init__(self, key: str, value, expected: str) -> None:
        super().__init__(f"{key}={value!r}: expected {expected}")
        self.key, self.value, self.expected = key, value, expected

    def under(self, prefix: str) -> OutOfRange:
        """The same refusal, named by the key of the config node the component was built from."""
        return OutOfRange(f"{prefix}.{self.key}", self.value, self.expected)


@dataclass(frozen=True)
class Range:
    """`kind` is int, float (any number), bool, or str for a choice among `also`; ge/gt/le/lt bound
    a number; `also` lists values allowed besides (-1 meaning all, None meaning off); `expected` is
    how an error says what fits."""

    kind: type
    expected: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple = ()

    def accepts(self, value) -> bool:
        if any(value is allowed or (type(value) is type(allowed) and value == allowed) for allowed in self.also):
            return True
        if self.kind is bool or isinstance(value, bool):
            return self.kind is bool and isinstance(value, bool)
        if self.kind not in (int, float) or not isinstance(value, int if self.kind is int else (int, float)):
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def check(self, key: str, value, error: type[Exception] | None = None) -> None:
        """Raise OutOfRange naming the key, the value found and what was expected (the command-line
        checks pass error=errors.ConfigError for the same message)."""
        if not self.accepts(value):
            refusal = OutOfRange(key, value, self.expected)
            raise refusal if error is None else error(str(refusal))


def one_of(*choices: str) -> Range:
    """A choice among names (a mode, a kind)."""
    return Range(str, f"one of {list(choices)}", also=choices)


BOOL = Range(bool, "true or false")
AT_LEAST_ONE = Range(int, "an int >= 1", ge=1)
DROPOUT_RATE = Range(float, "a float in [0, 1)", ge=0, lt=1)
# Torch threads of a train or eval process; null leaves them to the CPUs the job was given.
NUM_THREADS = Range(int, "an int >= 1, or null for torch's default", ge=1, also=(None,))
# How a train or eval process computes: float32, or autocast to bf16/fp16 (training/precision.py).
PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION = Range(str, f"one of {', '.join(PRECISIONS)}", also=PRECISIONS)


@functools.cache
def declared_ranges(function) -> dict[str, Range]:
    """The Range each parameter of `function` is annotated with (`Annotated[type, Range]`)."""
    hints = typing.get_type_hints(function, include_extras=True)
    ranges = {}
    for name, hint in hints.items():
        declared = [meta for meta in getattr(hint, "__metadata__", ()) if isinstance(meta, Range)]
        if declared:
            ranges[name] = declared[-1]
    return ranges


def checks_ranges(prefix: str | None):
    """Decorate a constructor: each argument is checked against its declared Range before the
    body runs; an error names the value as `<prefix>.<parameter>`, the key a user writes. A
    component built under several keys (a TokenMLP is the projector and the overlap head) passes
    None, and whoever builds it names the key (OutOfRange.under)."""

    def decorate(init):
        signature = inspect.signature(init)

        @functools.wraps(init)
        def checked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            for name, declared in declared_ranges(init).items():
                declared.check(name if prefix is None else f"{prefix}.{name}", bound.arguments[name])
            return init(*args, **kwargs)

        return checked

    return decorate
