"""What a resampler's shape rule is made of (each resampler module registers its own with `@rule`):
the record of what the weights fix (`InferredResampler`), the arguments no shape reveals
(`Unknown`, each saying whether it changes the outputs in eval mode), how the inferred values are
combined with other sources (`InferredResampler.resolve`, which refuses to guess an unknown that
matters), and helpers that read tensor shapes with errors naming the tensor."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vlm_resampler.errors import UserFacingError

Shapes = dict[str, tuple[int, ...]]
INFERRED = "inferred from weight shapes"


class ShapeInferenceError(UserFacingError, ValueError):
    """The weights do not have the shapes of any resampler we can rebuild."""


@dataclass(frozen=True)
class Unknown:
    """A constructor argument that no tensor shape reveals."""

    name: str
    affects_outputs: bool  # in eval mode
    why: str
    placeholder: Any = None  # used when it does not affect outputs and nothing supplies it


@dataclass
class InferredResampler:
    type_name: str
    target: str  # the class's import path, as a `_target_`
    hparams: dict[str, Any]  # constructor arguments fixed by shapes (input_dim included)
    unknown: tuple[Unknown, ...]
    derived: dict[str, Any] = field(default_factory=dict)  # shape facts that are not arguments
    notes: tuple[str, ...] = ()
    finish: Callable[[dict[str, Any], dict[str, Any]], None] | None = None

    def resolve(self, sources: Sequence[tuple[str, Mapping[str, Any]]]) -> ResolvedResampler:
        """Fill the unknowns from `sources` ([(label, values)], first source wins).

        An unknown that changes outputs and is in no source is an error that says how to
        supply it; one that does not is given its placeholder and reported as assumed.
        """
        values, origin = dict(self.hparams), {k: INFERRED for k in self.hparams}
        for item in self.unknown:
            for label, supplied in sources:
                if item.name in supplied:
                    values[item.name], origin[item.name] = supplied[item.name], label
                    break
        if self.finish is not None:
            self.finish(values, origin)
        missing = [u for u in self.unknown if u.name not in values and u.affects_outputs]
        if missing:
            raise ShapeInferenceError(self._missing_message(missing, sources))
        for item in self.unknown:
            if item.name not in values:
                values[item.name] = item.placeholder
                origin[item.name] = f"assumed {item.placeholder!r}: no effect at inference ({item.why})"
        return ResolvedResampler(self, values, origin)

    def _missing_message(self, missing: list[Unknown], sources) -> str:
        searched = ", ".join(label for label, _ in sources) or "no other source"
        lines = [f"cannot rebuild the {self.type_name} resampler from its weights alone; searched: {searched}."]
        for item in missing:
            lines.append(f"  {item.name}: {item.why}; pass resampler.{item.name}=... on the command line")
        return "\n".join(lines)


@dataclass
class ResolvedResampler:
    inferred: InferredResampler
    kwargs: dict[str, Any]  # every constructor argument
    origin: dict[str, str]  # argument -> where its value came from

    def build(self):
        from hydra.utils import get_class

        return get_class(self.inferred.target)(**self.kwargs)

    def config_node(self) -> dict[str, Any]:
        """The resampler's node in a model `_target_` tree (its input width comes from the vision encoder)."""
        node = {"_target_": self.inferred.target, "_partial_": True}
        return node | {k: v for k, v in self.kwargs.items() if k != "input_dim"}


# ---- shape access -------------------------------------------------------------------------


def shapes_of(state: Mapping[str, Any]) -> Shapes:
    """Key -> shape, from tensors or from shapes already read (e.g. safetensors headers)."""
    return {k: tuple(int(d) for d in getattr(v, "shape", v)) for k, v in state.items()}


def tensor_shape(shapes: Shapes, key: str, ndim: int) -> tuple[int, ...]:
    if key not in shapes:
        raise ShapeInferenceError(f"expected a tensor {key!r}, found only: {preview(shapes)}")
    if len(shapes[key]) != ndim:
        raise ShapeInferenceError(f"{key}: expected a {ndim}-d tensor, found shape {list(shapes[key])}")
    return shapes[key]


def block_indices(shapes: Shapes, prefix: str) -> list[int]:
    """The i of every `{prefix}.{i}.` key, checked to run 0..n-1 without gaps."""
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    found = sorted({int(m.group(1)) for k in shapes if (m := pattern.match(k))})
    if found != list(range(len(found))):
        raise ShapeInferenceError(f"{prefix}.*: expected indices 0..{len(found) - 1}, found {found}")
    return found


def shared_value(what: str, values: dict[str, int]) -> int:
    """The one value that every named tensor dimension must share."""
    distinct = sorted(set(values.values()))
    if len(distinct) != 1:
        raise ShapeInferenceError(
            f"{what} differs between tensors: " + ", ".join(f"{k}={v}" for k, v in values.items())
        )
    return distinct[0]


def preview(shapes: Shapes, n: int = 6) -> str:
    keys = sorted(shapes)
    if not keys:
        return "(no tensors)"
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "")


def target_of(cls) -> str:
    return f"{cls.__module__}.{cls.__name__}"


# ---- registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    type_name: str
    matches: Callable[[Shapes], bool]  # from key names only
    infer: Callable[[Shapes], InferredResampler]


RULES: dict[str, Rule] = {}


def rule(type_name: str, matches: Callable[[Shapes], bool]):
    def register(infer: Callable[[Shapes], InferredResampler]):
        RULES[type_name] = Rule(type_name, matches, infer)
        return infer

    return register


DROPOUT = Unknown("dropout", False, "dropout is inactive in eval mode", 0.0)
