"""What a SynthPano scene is made of: colours, shapes, sizes, directions, angular sizes, and
the scene and object records."""

from __future__ import annotations

import math
from dataclasses import dataclass

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (240, 215, 30),
    "purple": (145, 55, 195),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle")
# Every angular size below is multiplied by the object's size scale.
SIZE_SCALE: dict[str, float] = {"small": 1.0, "large": 1.6}
SIZES = tuple(SIZE_SCALE)
# Canonical order used by most caption phrasings: the horizon, then the poles.
DIRECTION_YAW_DEG: dict[str, float] = {"front": 0.0, "right": 90.0, "behind": 180.0, "left": -90.0}
HORIZON_DIRECTIONS = tuple(DIRECTION_YAW_DEG)
POLE_DIRECTIONS = ("above", "below")
DIRECTIONS = HORIZON_DIRECTIONS + POLE_DIRECTIONS
YAW_JITTER_DEG = 15.0
PITCH_JITTER_DEG = 10.0
# Objects above / below: |pitch| in this range (sign from the direction), any yaw.
POLE_PITCH_DEG = (60.0, 80.0)
# Share of scenes with an object above or below (one of each only when there are >= 2 objects).
POLE_SCENE_FRACTION = 0.25
# Small angular sizes (radius / half-side / circumradius). A 120 deg, 112 px pinhole view has
# only ~0.56 px per degree at its centre, so small shapes are ~22-25 px wide there.
CIRCLE_RADIUS_DEG = 20.0
SQUARE_HALF_SIDE_DEG = 18.0
TRIANGLE_CIRCUMRADIUS_DEG = 26.0
# Any two objects' centres are at least the sum of their extents (object_extent_deg) plus this
# apart, so their bounding caps, and the shapes in them, never touch (~3 px at 512x256).
OBJECT_GAP_DEG = 2.0


def object_extent_deg(shape: str, size: str) -> float:
    """Largest angle from an object's centre to any of its points: the radius of the cap holding it.

    Gnomonic projection keeps angles from the centre: a tangent-plane point at distance t is
    atan(t) away. Circle: its radius; triangle: its circumradius (the vertices); square: its
    corners, atan(sqrt(2) tan(half side)).
    """
    scale = SIZE_SCALE[size]
    if shape == "circle":
        return CIRCLE_RADIUS_DEG * scale
    if shape == "square":
        return math.degrees(math.atan(math.sqrt(2.0) * math.tan(math.radians(SQUARE_HALF_SIDE_DEG * scale))))
    if shape == "triangle":
        return TRIANGLE_CIRCUMRADIUS_DEG * scale
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    direction: str
    yaw: float  # degrees, (-180, 180], positive = right of front
    pitch: float  # degrees, positive = up
    size: str = "small"  # files of generator version <= 2 record no size: all their objects are small


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # canonical direction order
    sky_rgb: tuple[float, float, float]  # at the horizon, 0-255
    zenith_rgb: tuple[float, float, float]
    ground_rgb: tuple[float, float, float]  # at the horizon
    nadir_rgb: tuple[float, float, float]
    captions: tuple[str, ...]
