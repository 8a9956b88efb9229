"""SynthPano: a tiny, deterministic synthetic panorama-captioning dataset in the QuIC-360 layout.

Each scene is an equirectangular (ERP) image with a plain sky/ground background and 1-3 coloured
shapes (circle / square / triangle, small or large). Objects on the horizon sit front / right /
behind / left; in about a quarter of the scenes one object is above (pitch +60..80 deg, any yaw),
one below (-60..-80) or, rarely, one of each. Shapes are drawn in spherical coordinates (gnomonic
projection around each object's centre), so they are distorted like real content, wrap around
the ERP seam and cover the poles with their correct shape. Objects never touch: their centres are
placed so that the caps bounding them keep a gap. Several differently-phrased reference captions
state every object's size, colour, shape and direction ("a large red circle in front"), and
question/answer pairs ask what is in each direction, how many objects there are, and each
object's colour and size.

Layout written under ``root``::

    images/<split>_<idx:05d>.png
    <split>.csv              columns url,query,annotation; one row per reference caption
    <split>_qa.csv           the same columns; one row per question (query) and its answer
    <split>_conversations.jsonl  caption and questions as chat turns, one line per image
    <split>_objects.jsonl    one line per image: {"url", "objects": [{shape, colour, size, ...}], "seam"}
    manifest.json            generator version, parameters, counts, sha256 of each CSV
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_resampler.panorama.geometry import wrap_yaw

GENERATOR_NAME = "vlm_resampler.data.synthpano"
GENERATOR_VERSION = 3  # 2: question/answer pairs, conversations, seam flag; 3: sizes, objects above/below
# Scenes are drawn from streams keyed by this, not by GENERATOR_VERSION: new file layouts keep
# the same scenes (and so stay comparable with earlier measurements). 2: sizes, poles.
SCENE_STREAM_VERSION = 2
SPLITS = ("train", "val", "test")
CSV_COLUMNS = ("url", "query", "annotation")
DEFAULT_QUERY = "Describe the panorama."

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
# Positions are redrawn until they keep that gap; after this many tries a layout that always
# does is used (nominal yaws on the horizon, poles at the extreme pitch in the widest yaw gap).
PLACEMENT_TRIES = 100

# "at" phrases answer "where is it?", "toward" phrases follow "shows ... ", "lead" phrases open
# "... there is".
_AT_PHRASE = {"front": "in front", "right": "on the right", "behind": "behind", "left": "on the left",
              "above": "above", "below": "below"}
_TOWARD_PHRASE = {"front": "ahead", "right": "to the right", "behind": "behind", "left": "to the left",
                  "above": "overhead", "below": "underfoot"}
_LEAD_PHRASE = {**_AT_PHRASE, "above": "up above", "below": "down below"}
_NUMBER_WORD = {1: "one", 2: "two", 3: "three"}


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


# The largest extent of any object (a large triangle: 41.6 deg).
OBJECT_BOUND_DEG = max(object_extent_deg(shape, size) for shape in SHAPES for size in SIZES)


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


# --------------------------------------------------------------------------- scene sampling


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, scene): scene i never depends on how many scenes exist."""
    return np.random.default_rng(np.random.SeedSequence([SCENE_STREAM_VERSION, seed, SPLITS.index(split), index]))


# Scenes for pretraining backbones on SynthPano's text (models/code_reader.py): a stream of their
# own, so that no train, val or test scene is ever among them.
PRETEXT_STREAM = len(SPLITS)


def pretext_scene(seed: int, index: int) -> Scene:
    """Scene `index` of the pretraining stream (objects and captions; nothing is rendered)."""
    return sample_scene(np.random.default_rng(np.random.SeedSequence([SCENE_STREAM_VERSION, seed, PRETEXT_STREAM, index])))


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
        for b in objects[i + 1:]:
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
        gaps = [((horizon_yaws[(i + 1) % len(horizon_yaws)] - yaw) % 360.0 or 360.0, yaw) for i, yaw in enumerate(horizon_yaws)]
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
        objects = [SceneObject(shape, colour, d, yaw, pitch, size) for (d, colour, shape, size), (yaw, pitch) in zip(kinds, positions)]
        if objects_keep_apart(objects):
            return objects
    positions = _fallback_positions(directions)
    return [SceneObject(shape, colour, d, yaw, pitch, size) for (d, colour, shape, size), (yaw, pitch) in zip(kinds, positions)]


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


# --------------------------------------------------------------------------- captions


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _noun(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape}"


def describe_objects(objects: Sequence[SceneObject], rng: np.random.Generator) -> list[str]:
    """Four reference captions, each naming every object's size, colour, shape and direction.

    ``objects`` must be in canonical direction order; the last phrasing lists them in a random
    order so that the model cannot rely on position alone.
    """
    if not 1 <= len(objects) <= len(_NUMBER_WORD):
        raise ValueError(f"expected 1-{len(_NUMBER_WORD)} objects, got {len(objects)}")
    listing = _join([f"{_noun(o)} {_AT_PHRASE[o.direction]}" for o in objects])
    located = "; ".join(f"{_LEAD_PHRASE[o.direction]} there is {_noun(o)}" for o in objects)
    shows = _join([f"{_noun(o)} {_TOWARD_PHRASE[o.direction]}" for o in objects])
    shuffled = [objects[i] for i in rng.permutation(len(objects))]
    count = _NUMBER_WORD[len(objects)]
    counted_head = "there is one object" if len(objects) == 1 else f"there are {count} objects"
    counted = _join([f"{_noun(o)} {_AT_PHRASE[o.direction]}" for o in shuffled])
    return [
        f"{listing}.",
        f"{located}.",
        f"the panorama shows {shows}.",
        f"{counted_head}: {counted}.",
    ]


def question_answers(objects: Sequence[SceneObject]) -> list[tuple[str, str]]:
    """Short questions with one exact answer each: what is in each direction, above and below
    included (or nothing), how many objects, and which colour and what size each object is."""
    by_direction = {o.direction: o for o in objects}
    pairs = []
    for direction in DIRECTIONS:
        obj = by_direction.get(direction)
        pairs.append((f"What is {_AT_PHRASE[direction]}?", f"{_noun(obj)}." if obj else "nothing."))
    pairs.append(("How many objects are there?", f"{_NUMBER_WORD[len(objects)]}."))
    for obj in objects:
        pairs.append((f"Which colour is the {obj.shape} {_AT_PHRASE[obj.direction]}?", f"{obj.colour}."))
    for obj in objects:
        pairs.append((f"What size is the {obj.colour} {obj.shape} {_AT_PHRASE[obj.direction]}?", f"{obj.size}."))
    return pairs


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=4)
def _erp_directions(height: int, width: int) -> np.ndarray:
    """Unit direction [H, W, 3] of every ERP pixel centre (py360convert / geometry.py conventions)."""
    lon = ((np.arange(width) + 0.5) / width - 0.5) * (2.0 * np.pi)
    lat = (0.5 - (np.arange(height) + 0.5) / height) * np.pi
    lon_grid, lat_grid = np.meshgrid(lon, lat)
    cos_lat = np.cos(lat_grid)
    dirs = np.stack([cos_lat * np.sin(lon_grid), np.sin(lat_grid), cos_lat * np.cos(lon_grid)], axis=-1)
    dirs.setflags(write=False)
    return dirs


def _camera_to_world(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    rot_y = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rot_x_neg_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    return rot_y @ rot_x_neg_pitch


def _triangle_mask(x: np.ndarray, y: np.ndarray, circumradius: float) -> np.ndarray:
    """Upward equilateral triangle centred at the origin: inside all three edges' half-planes."""
    inradius = circumradius / 2.0
    inside = np.ones(x.shape, dtype=bool)
    for normal_deg in (270.0, 30.0, 150.0):  # outward normals of the edges opposite each vertex
        nx, ny = math.cos(math.radians(normal_deg)), math.sin(math.radians(normal_deg))
        inside &= x * nx + y * ny <= inradius
    return inside


def shape_mask(obj: SceneObject, dirs: np.ndarray) -> np.ndarray:
    """Boolean mask [...] of the unit directions ``dirs`` [..., 3] that fall inside ``obj``.

    Each direction is expressed in the object's tangent frame and gnomonically projected
    (x = p_x / p_z, y = p_y / p_z); shape sizes are angles, so the tangent plane uses tan(size).
    """
    if obj.shape not in SHAPES:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    if obj.size not in SIZE_SCALE:
        raise ValueError(f"unknown size {obj.size!r}; expected one of {SIZES}")
    scale = SIZE_SCALE[obj.size]
    local = dirs @ _camera_to_world(obj.yaw, obj.pitch)
    depth = local[..., 2]
    in_front = depth > 0.0
    safe_depth = np.where(in_front, depth, 1.0)
    x, y = local[..., 0] / safe_depth, local[..., 1] / safe_depth
    if obj.shape == "circle":
        inside = x * x + y * y <= math.tan(math.radians(CIRCLE_RADIUS_DEG * scale)) ** 2
    elif obj.shape == "square":
        half = math.tan(math.radians(SQUARE_HALF_SIDE_DEG * scale))
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    else:
        inside = _triangle_mask(x, y, math.tan(math.radians(TRIANGLE_CIRCUMRADIUS_DEG * scale)))
    return in_front & inside


def _object_window(obj: SceneObject, erp_hw: tuple[int, int]) -> tuple[slice, slice | np.ndarray]:
    """Rows (a slice) and columns of an ERP block containing ``obj``: a slice, or indices where
    the block wraps around the seam.

    Testing only this block instead of the whole ERP makes rendering ~30x cheaper. The block
    holds every pixel within the object's extent (object_extent_deg) of its centre, plus one
    pixel of margin.
    """
    height, width = erp_hw
    bound = math.radians(object_extent_deg(obj.shape, obj.size))
    pitch = math.radians(obj.pitch)
    deg_per_row, deg_per_col = math.pi / height, 2.0 * math.pi / width
    top = max(0, math.floor((math.pi / 2.0 - (pitch + bound)) / deg_per_row) - 1)
    bottom = min(height, math.ceil((math.pi / 2.0 - (pitch - bound)) / deg_per_row) + 1)
    widest_lat = abs(pitch) + bound
    if widest_lat >= math.pi / 2.0:
        return slice(top, bottom), slice(0, width)  # the block reaches a pole: every longitude
    half_lon = math.asin(min(1.0, math.sin(bound) / math.cos(widest_lat)))
    half_cols = math.ceil(half_lon / deg_per_col) + 1
    if 2 * half_cols + 1 >= width:
        return slice(top, bottom), slice(0, width)
    centre_col = round((math.radians(obj.yaw) / (2.0 * math.pi) + 0.5) * width - 0.5)
    first, last = centre_col - half_cols, centre_col + half_cols
    if 0 <= first and last < width:
        return slice(top, bottom), slice(first, last + 1)  # a view, not a copy
    return slice(top, bottom), np.arange(first, last + 1) % width


def object_mask(obj: SceneObject, erp_hw: tuple[int, int]) -> np.ndarray:
    """Boolean [H, W] mask of the ERP pixels covered by ``obj``."""
    rows, cols = _object_window(obj, erp_hw)
    mask = np.zeros(erp_hw, dtype=bool)
    mask[rows, cols] = shape_mask(obj, _erp_directions(*erp_hw)[rows, cols])
    return mask


def _background(scene: Scene, erp_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] sky/ground gradient; it depends on latitude only, so build one column and tile it."""
    height, width = erp_hw
    lat = (0.5 - (np.arange(height) + 0.5) / height) * np.pi
    t = np.abs(lat)[:, None] / (np.pi / 2.0)  # 0 at the horizon, 1 at the poles
    sky = (1.0 - t) * np.array(scene.sky_rgb) + t * np.array(scene.zenith_rgb)
    ground = (1.0 - t) * np.array(scene.ground_rgb) + t * np.array(scene.nadir_rgb)
    column = np.clip(np.rint(np.where((lat > 0.0)[:, None], sky, ground)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(column[:, None, :], (height, width, 3)))


def render_scene(scene: Scene, erp_hw: tuple[int, int]) -> np.ndarray:
    """uint8 ERP image [H, W, 3] of ``scene``."""
    image = _background(scene, erp_hw)
    directions = _erp_directions(*erp_hw)
    for obj in scene.objects:
        rows, cols = _object_window(obj, erp_hw)
        block = image[rows, cols]  # a view, or a copy (columns across the seam) written back below
        block[shape_mask(obj, directions[rows, cols])] = COLOURS[obj.colour]
        if isinstance(cols, np.ndarray):
            image[rows, cols] = block
    return image


def crosses_seam(obj: SceneObject, erp_hw: tuple[int, int]) -> bool:
    """True when the rendered object touches both the first and the last ERP column: it straddles
    the 0/360 seam, where views cut naively from the ERP split it in two. (An object over a pole
    touches every column, so it straddles the seam too.)"""
    width = erp_hw[1]
    rows, cols = _object_window(obj, erp_hw)
    block_cols = np.arange(width)[cols]
    if not ((block_cols == 0).any() and (block_cols == width - 1).any()):
        return False  # the object's block does not reach both edge columns
    edges = shape_mask(obj, _erp_directions(*erp_hw)[rows][:, [0, width - 1]])
    return bool(edges[:, 0].any() and edges[:, 1].any())


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- dataset files


def _validate_params(seed: int, counts: dict[str, int], size: tuple[int, int], query: str) -> tuple[int, int]:
    if int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    for split, count in counts.items():
        if int(count) != count or count < 0:
            raise ValueError(f"num_{split} must be an integer >= 0, got {count!r}")
    if len(size) != 2:
        raise ValueError(f"size must be (width, height), got {size!r}")
    width, height = int(size[0]), int(size[1])
    if height < 16 or width != 2 * height:
        raise ValueError(f"size must be (width, height) with width == 2 * height >= 32, got {size!r}")
    if not query.strip():
        raise ValueError("query must be a non-empty string")
    return height, width


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_split(out_dir: Path, split: str, count: int, seed: int, erp_hw: tuple[int, int], query: str) -> int:
    """Render one split into ``out_dir``; returns the number of caption CSV rows written.

    Per split: ``<split>.csv`` (captions), ``<split>_qa.csv`` (question/answer pairs), both in the
    QuIC-360 layout; ``<split>_conversations.jsonl`` (the same as chat turns, one line per image);
    ``<split>_objects.jsonl`` (the scene's objects and whether one straddles the seam).
    """
    rows = 0
    with (
        open(out_dir / f"{split}.csv", "w", newline="", encoding="utf-8") as csv_file,
        open(out_dir / f"{split}_qa.csv", "w", newline="", encoding="utf-8") as qa_file,
        open(out_dir / f"{split}_conversations.jsonl", "w", encoding="utf-8") as conversations_file,
        open(out_dir / f"{split}_objects.jsonl", "w", encoding="utf-8") as objects_file,
    ):
        writer, qa_writer = csv.writer(csv_file, lineterminator="\n"), csv.writer(qa_file, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        qa_writer.writerow(CSV_COLUMNS)
        for index in range(count):
            scene = sample_scene(_scene_rng(seed, split, index))
            url = f"images/{split}_{index:05d}.png"
            (out_dir / url).write_bytes(_png_bytes(render_scene(scene, erp_hw)))
            for caption in scene.captions:
                writer.writerow((url, query, caption))
                rows += 1
            pairs = question_answers(scene.objects)
            qa_writer.writerows((url, question, answer) for question, answer in pairs)
            turns = [(query, scene.captions[0]), *pairs]
            conversation = [
                {"from": role, "value": value}
                for question, answer in turns
                for role, value in (("human", question), ("gpt", answer))
            ]
            conversation[0]["value"] = "<image>\n" + conversation[0]["value"]
            conversations_file.write(json.dumps({"image": url, "conversations": conversation}) + "\n")
            seam = any(crosses_seam(o, erp_hw) for o in scene.objects)
            record = {"url": url, "objects": [asdict(o) for o in scene.objects], "seam": seam}
            objects_file.write(json.dumps(record, sort_keys=True) + "\n")
    return rows


def _params(seed: int, num_train: int, num_val: int, num_test: int, size: tuple[int, int], query: str) -> dict:
    return {
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_test": int(num_test),
        "size": [int(size[0]), int(size[1])],
        "query": query,
    }


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is swapped out first, then deleted."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)


def generate_synthpano(
    root: Path,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 100,
    num_test: int = 100,
    size: tuple[int, int] = (512, 256),
    query: str = DEFAULT_QUERY,
) -> dict[str, Path]:
    """(Re)generate the dataset at ``root`` atomically; returns split -> CSV path.

    ``size`` is (width, height). Everything is a pure function of the arguments: the same
    arguments give byte-identical files. Splits use independent random streams derived from
    ``seed``, so they share no scene.
    """
    root = Path(root)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    erp_hw = _validate_params(seed, counts, size, query)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        (staging / "images").mkdir()
        rows = {split: _write_split(staging, split, int(n), int(seed), erp_hw, query) for split, n in counts.items()}
        manifest = {
            "generator": GENERATOR_NAME,
            "version": GENERATOR_VERSION,
            "params": _params(seed, num_train, num_val, num_test, size, query),
            "counts": {split: {"images": int(counts[split]), "rows": rows[split]} for split in SPLITS},
            "csv_sha256": {split: _sha256(staging / f"{split}.csv") for split in SPLITS},
            "qa_csv_sha256": {split: _sha256(staging / f"{split}_qa.csv") for split in SPLITS},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _replace_dir(staging, root)
    finally:
        # Only still present if something failed before the rename.
        if staging.exists():
            shutil.rmtree(staging)
    return {split: root / f"{split}.csv" for split in SPLITS}


def _existing_matches(root: Path, params: dict) -> bool:
    """True when ``root`` holds a complete dataset generated with exactly ``params``."""
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return False
    if manifest.get("version") != GENERATOR_VERSION or manifest.get("params") != params:
        return False
    for split in SPLITS:
        csv_path = root / f"{split}.csv"
        if not csv_path.is_file() or _sha256(csv_path) != manifest.get("csv_sha256", {}).get(split):
            return False
        qa_path = root / f"{split}_qa.csv"
        if not qa_path.is_file() or _sha256(qa_path) != manifest.get("qa_csv_sha256", {}).get(split):
            return False
        for index in range(params[f"num_{split}"]):
            if not (root / "images" / f"{split}_{index:05d}.png").is_file():
                return False
    return True


def ensure_synthpano(
    root: Path,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 100,
    num_test: int = 100,
    size: tuple[int, int] = (512, 256),
    query: str = DEFAULT_QUERY,
) -> dict[str, Path]:
    """Reuse the dataset at ``root`` if its manifest matches these parameters, else regenerate it."""
    root = Path(root)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    _validate_params(seed, counts, size, query)
    if _existing_matches(root, _params(seed, num_train, num_val, num_test, size, query)):
        return {split: root / f"{split}.csv" for split in SPLITS}
    import time

    started = time.perf_counter()
    csvs = generate_synthpano(root, seed, num_train, num_val, num_test, size, query)
    print(f"one-time build: SynthPano ({num_train}/{num_val}/{num_test} panoramas) generated in "
          f"{time.perf_counter() - started:.0f} s into {root}", flush=True)
    return csvs


# --------------------------------------------------------------------------- reading


def load_quic360_csv(csv_path: Path) -> list[dict]:
    """Read a QuIC-360-style CSV into one record per (url, query), in first-appearance order.

    Returns ``[{"image": Path, "query": str, "references": [str, ...]}, ...]``; relative urls are
    resolved against the CSV's folder. Any bad row is an error naming the file and the row.
    """
    from vlm_resampler.data.quic360 import read_quic360_csv

    return read_quic360_csv(csv_path)[0]


def load_objects(jsonl_path: Path) -> dict[str, list[SceneObject]]:
    """Read ``<split>_objects.jsonl``: url -> objects of that image."""
    records = {}
    for line in Path(jsonl_path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        records[record["url"]] = [SceneObject(**obj) for obj in record["objects"]]
    return records


def seam_urls(jsonl_path: Path) -> set[str]:
    """Urls (as in the CSVs) of the images where an object straddles the 0/360 seam."""
    lines = Path(jsonl_path).read_text(encoding="utf-8").splitlines()
    return {record["url"] for record in map(json.loads, lines) if record["seam"]}
