"""``cubemap``: the six faces of a cube around the viewer, optionally widened so neighbours overlap."""

from __future__ import annotations

from typing import Annotated

from vlm_resampler.panorama.base import VIEW_SIZE, ViewMeta, ViewStrategy
from vlm_resampler.ranges import Range, checks_ranges

# (label, yaw, pitch) in py360convert's face order F R B L U D. With pitch +-90 and yaw 0 the image's
# top edge of U touches B and its bottom edge touches F (and the reverse for D), as in a cube net.
FACES = (
    ("front", 0.0, 0.0),
    ("right", 90.0, 0.0),
    ("back", 180.0, 0.0),
    ("left", -90.0, 0.0),
    ("up", 0.0, 90.0),
    ("down", 0.0, -90.0),
)
# The cube's 12 edges: the four around the horizon, then each side face with up and with down.
EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (1, 4), (2, 4), (3, 4), (0, 5), (1, 5), (2, 5), (3, 5))
# At overlap 0.5 a face would be 180 degrees wide: no pinhole camera sees that.
FACE_OVERLAP = Range(float, "a float in [0, 0.5)", ge=0, lt=0.5)


class CubemapViews(ViewStrategy):
    """Six square perspective faces (front, right, back, left, up, down).

    ``overlap=0`` is the plain cube (90 degree faces, which meet at their edges and share no
    direction); ``overlap > 0`` widens every face to 90 / (1 - overlap) degrees, so each face shares
    ``overlap`` of its fov with each of its four neighbours, as e2p's overlap does.
    """

    name = "cubemap"

    @checks_ranges("view")
    def __init__(self, size: Annotated[int, VIEW_SIZE] = 112, overlap: Annotated[float, FACE_OVERLAP] = 0.1) -> None:
        self.size = size
        self.overlap = float(overlap)
        self.fov_deg = 90.0 / (1.0 - self.overlap)
        super().__init__(
            [
                ViewMeta(
                    index=i,
                    yaw_deg=yaw,
                    pitch_deg=pitch,
                    fov_deg=self.fov_deg,
                    size=(self.size, self.size),
                    label=label,
                )
                for i, (label, yaw, pitch) in enumerate(FACES)
            ]
        )

    def settings(self) -> dict:
        return {"size": self.size, "overlap": self.overlap}

    def neighbour_pairs(self) -> list[tuple[int, int]]:
        return list(EDGES)
