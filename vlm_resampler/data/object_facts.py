"""What each view of a SynthPano panorama holds, as small integer tables: the targets that an
object-code reading LLM is pretrained on and that the resampler stage may regress onto.

Per view, three roles: the horizon object the view faces (the one whose yaw is nearest to this
view's among all views), the object above and the object below (every horizon view is given the
pole objects: they sit at pitch 60-80 deg and any yaw, at the top and bottom edge of such views).
Each role holds (size, colour, shape) indices, or NOTHING in all three. A view's direction is the
named horizon direction (front, right, behind, left) nearest to its yaw.

These are SynthPano's true object attributes: privileged supervision that only synthetic data
has. Data without object annotations (QuIC-360) has no facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vlm_resampler.data.synthpano.files import load_objects
from vlm_resampler.data.synthpano.objects import (
    COLOURS,
    DIRECTION_YAW_DEG,
    HORIZON_DIRECTIONS,
    SHAPES,
    SIZES,
    SceneObject,
)

ROLES = ("horizon", "above", "below")
ATTRIBUTES = {"size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES}
NOTHING = -1


def _yaw_distance(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def view_directions(view_yaws: Sequence[float]) -> list[int]:
    """Index into HORIZON_DIRECTIONS of the named direction nearest to each view's yaw."""
    return [
        min(range(len(HORIZON_DIRECTIONS)), key=lambda d: _yaw_distance(yaw, DIRECTION_YAW_DEG[HORIZON_DIRECTIONS[d]]))
        for yaw in view_yaws
    ]


def _attribute_row(obj: SceneObject) -> list[int]:
    return [SIZES.index(obj.size), list(COLOURS).index(obj.colour), SHAPES.index(obj.shape)]


def view_facts(objects: Sequence[SceneObject], view_yaws: Sequence[float]) -> torch.Tensor:
    """[V, len(ROLES), 3] long: per view and role the (size, colour, shape) indices, or NOTHING."""
    table = torch.full((len(view_yaws), len(ROLES), 3), NOTHING, dtype=torch.long)
    for obj in objects:
        row = torch.tensor(_attribute_row(obj))
        if obj.direction in DIRECTION_YAW_DEG:
            nearest = min(range(len(view_yaws)), key=lambda v: _yaw_distance(view_yaws[v], obj.yaw))
            table[nearest, ROLES.index("horizon")] = row
        else:
            table[:, ROLES.index(obj.direction)] = row
    return table


def facts_by_image(data_root: Path, split: str, view_yaws: Sequence[float]) -> dict[str, torch.Tensor]:
    """Image path (as the split's items name it) -> view_facts, from `<split>_objects.jsonl`."""
    objects_file = Path(data_root) / f"{split}_objects.jsonl"
    if not objects_file.is_file():
        raise FileNotFoundError(
            f"{objects_file} not found: object facts need SynthPano's object annotations "
            "(data without them, such as QuIC-360, cannot use an object-code target)"
        )
    return {str(Path(data_root) / url): view_facts(objs, view_yaws) for url, objs in load_objects(objects_file).items()}
