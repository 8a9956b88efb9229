"""Scene sampling: an independent random stream per (seed, split, scene), objects placed so that
they never touch, captions drawn with them."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np

from vlm_resampler.data.synthpano.objects import (
    COLOURS,
    DIRECTION_YAW_DEG,
    HORIZON_DIRECTIONS,
    OBJECT_GAP_DEG,
    PITCH_JITTER_DEG,
    POLE_DIRECTIONS,
    POLE_PITCH_DEG,
    POLE_SCENE_FRACTION,
    SHAPES,
    SIZES,
    YAW_JITTER_DEG,
    Scene,
    SceneObject,
    object_extent_deg,
)
from vlm_resampler.data.synthpano.text import describe_objects
from vlm_resampler.panorama.geometry import wrap_yaw

# Scenes are drawn from streams keyed by this, not by GENERATOR_VERSION: new file layouts keep
# the same scenes (and so stay comparable with earlier measurements). 2: sizes, poles.
SCENE_STREAM_VERSION = 2
SPLITS = ("train", "val", "test")
# Positions are redrawn until they keep that gap; after this many tries a layout that always
# does is used (nominal yaws on the horizon, poles at the extreme pitch in the widest yaw gap).
PLACEMENT_TRIES = 100

# --------------------------------------------------------------------------- scene sampling


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, scene): scene i never depends on how many scenes exist."""
    return np.random.default_rng(np.random.SeedSequence([SCENE_STREAM_VERSION, seed, SPLITS.index(split), index]))


# Scenes for pretraining backbones on SynthPano's text (models/code_reader.py): a stream of their
# own, so that no train, val or test scene is ever among them.
PRETEXT_STREAM = len(SPLITS)


def pretext_scene(seed: int, index: int) -> Scene:
    """Scene `index` of the pretraining stream (objects and captions; nothing is rendered)."""
    return sample_scene(
        np.random.default_rng(np.random.SeedSequence([SCENE_STREAM_VERSION, seed, PRETEXT_STREAM, index]))
    )


def _muted_rgb(rng: np.random.Generator, value_range: tuple[float, float]) -> tuple[float, float, float]:
    hue = float(rng.uniform(0.0, 1.0))
    saturation = float(rng.uniform(0.05, 0.25))  # low saturation keeps the coloured shapes salient
    value = float(rng.uniform(*value_range))
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return (r * 255.0, g * 255.0, b * 255.0)


def _darker(rgb: tuple[float, float, float], factor: float) -> tuple[float, float, float]:
    return (rgb[0] * factor, rgb[1] * factor, rgb[2] * factor)


def angular_distance_deg(yaw_a: float, pitch_a: float, yaw_b: float, pitch_b: float) -> float:
    """Great-circle angle between two (yaw, pitch) directions, degrees."""
    pa, pb, dyaw = math.radians(pitch_a), math.radians(pitch_b), math.radians(yaw_a - yaw_b)
    cos_d = math.sin(pa) * math.sin(pb) + math.cos(pa) * math.cos(pb) * math.cos(dyaw)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos_d))))


def objects_keep_apart(objects: Sequence[SceneObject]) -> bool:
    """True when every two objects' bounding caps are at least OBJECT_GAP_DEG apart."""
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            needed = object_extent_deg(a.shape, a.size) + object_extent_deg(b.shape, b.size) + OBJECT_GAP_DEG
            if angular_distance_deg(a.yaw, a.pitch, b.yaw, b.pitch) < needed:
                return False
    return True


def _pole_sign(direction: str) -> float:
    return 1.0 if direction == "above" else -1.0


def _draw_position(rng: np.random.Generator, direction: str) -> tuple[float, float]:
    if direction in POLE_DIRECTIONS:
        yaw = float(rng.uniform(-180.0, 180.0))
        pitch = _pole_sign(direction) * float(rng.uniform(*POLE_PITCH_DEG))
    else:
        yaw = DIRECTION_YAW_DEG[direction] + float(rng.uniform(-YAW_JITTER_DEG, YAW_JITTER_DEG))
        pitch = float(rng.uniform(-PITCH_JITTER_DEG, PITCH_JITTER_DEG))
    # Rounded so the JSONL annotations reproduce the rendered scene exactly.
    return wrap_yaw(round(wrap_yaw(yaw), 3)), round(pitch, 3)  # wrapped again: -179.9996 rounds to -180


def _fallback_positions(directions: Sequence[str]) -> list[tuple[float, float]]:
    """A layout that always keeps objects apart: horizon objects at their nominal yaw on the
    horizon (90 deg apart, more than two large triangles' 2 x 41.6 + gap), poles at the extreme
    pitch in the middle of the widest yaw gap between horizon objects (>= 180 deg wide: a scene
    with a pole has at most two on the horizon), which puts them >= 90 deg from each."""
    horizon_yaws = sorted(DIRECTION_YAW_DEG[d] for d in directions if d in DIRECTION_YAW_DEG)
    pole_yaw = 0.0
    if horizon_yaws:
        gaps = [
            ((horizon_yaws[(i + 1) % len(horizon_yaws)] - yaw) % 360.0 or 360.0, yaw)
            for i, yaw in enumerate(horizon_yaws)
        ]
        width, start = max(gaps)
        pole_yaw = wrap_yaw(start + width / 2.0)
    return [
        (pole_yaw, _pole_sign(d) * POLE_PITCH_DEG[1]) if d in POLE_DIRECTIONS else (wrap_yaw(DIRECTION_YAW_DEG[d]), 0.0)
        for d in directions
    ]


def _place(rng: np.random.Generator, kinds: Sequence[tuple[str, str, str, str]]) -> list[SceneObject]:
    """Positions for (direction, colour, shape, size) tuples, redrawn until no two objects touch."""
    directions = [kind[0] for kind in kinds]
    for _ in range(PLACEMENT_TRIES):
        positions = [_draw_position(rng, direction) for direction in directions]
        objects = [
            SceneObject(shape, colour, d, yaw, pitch, size)
            for (d, colour, shape, size), (yaw, pitch) in zip(kinds, positions)
        ]
        if objects_keep_apart(objects):
            return objects
    positions = _fallback_positions(directions)
    return [
        SceneObject(shape, colour, d, yaw, pitch, size)
        for (d, colour, shape, size), (yaw, pitch) in zip(kinds, positions)
    ]


def _sample_directions(rng: np.random.Generator, num_objects: int) -> list[str]:
    """Directions of ``num_objects`` objects in canonical order: at most one per direction, and in
    POLE_SCENE_FRACTION of the scenes one above, one below or (>= 2 objects) one of each."""
    poles: tuple[str, ...] = ()
    if float(rng.uniform()) < POLE_SCENE_FRACTION:
        options = [("above",), ("below",)] + ([POLE_DIRECTIONS] if num_objects >= 2 else [])
        poles = options[int(rng.integers(len(options)))]
    num_horizon = num_objects - len(poles)
    horizon_ids = rng.choice(len(HORIZON_DIRECTIONS), size=num_horizon, replace=False).tolist()
    return [HORIZON_DIRECTIONS[i] for i in sorted(horizon_ids)] + list(poles)


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one scene (objects, background colours, captions) from ``rng``."""
    num_objects = int(rng.integers(1, 4))
    kinds = []
    for direction in _sample_directions(rng, num_objects):
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        kinds.append((direction, colour, shape, size))
    objects = _place(rng, kinds)
    sky = _muted_rgb(rng, (0.55, 0.75))
    ground = _muted_rgb(rng, (0.30, 0.50))
    captions = describe_objects(objects, rng)
    return Scene(
        objects=tuple(objects),
        sky_rgb=sky,
        zenith_rgb=_darker(sky, 0.8),
        ground_rgb=ground,
        nadir_rgb=_darker(ground, 0.7),
        captions=tuple(captions),
    )
