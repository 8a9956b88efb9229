"""Resampler hyperparameters from weight shapes alone, for checkpoints whose metadata is gone.

Each resampler module registers its own shape rule with `@rule` (resamplers/shape_rules.py): how
to recognise its type from its parameter names, and which constructor arguments its tensor shapes
fix. Here the type of a state dict is found among all of them: every module of this package is
imported first, so a new resampler's rule is found without a list to update. The round-trip test
in tests/test_shape_inference.py checks every type of conf/resampler/ on random hyperparameters.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import cache
from typing import Any

import vlm_resampler.resamplers as resamplers_package
from vlm_resampler.resamplers.shape_rules import (
    RULES,
    InferredResampler,
    ShapeInferenceError,
    Shapes,
    preview,
    shapes_of,
)


@cache
def registered_rules() -> dict:
    """Every resampler type's shape rule: the package's modules imported (once), so each has registered its own."""
    for module in pkgutil.iter_modules(resamplers_package.__path__):
        importlib.import_module(f"{resamplers_package.__name__}.{module.name}")
    return RULES


def detect_type(shapes: Shapes) -> str:
    """The resampler type whose parameter names these are (exactly one must match)."""
    found = [name for name, r in registered_rules().items() if r.matches(shapes)]
    if len(found) != 1:
        what = "no resampler type" if not found else f"several types ({', '.join(found)})"
        raise ShapeInferenceError(
            f"the resampler weights match {what}: keys {preview(shapes)}; known types: {', '.join(sorted(RULES))}"
        )
    return found[0]


def infer_resampler(state: Mapping[str, Any]) -> InferredResampler:
    """Type and shape-determined hyperparameters of a resampler state dict (keys without the
    `resampler.` prefix; tensors or shapes)."""
    shapes = shapes_of(state)
    return registered_rules()[detect_type(shapes)].infer(shapes)
