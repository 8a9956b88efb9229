"""``e2p``: N perspective views around the horizon."""

from __future__ import annotations

from typing import Annotated

from vlm_resampler.panorama.base import (
    FOV_DEG,
    NUM_VIEWS,
    OVERLAP,
    PITCH_DEG,
    VIEW_SIZE,
    ViewStrategy,
    cyclic_pairs,
    horizon_view_count,
    ring_of_views,
)
from vlm_resampler.ranges import checks_ranges


class HorizonViews(ViewStrategy):
    """N square perspective views at one pitch, view 0 looking at longitude 0 and view v+1 turned
    right of view v by 360/N degrees.

    ``num_views=None`` takes the fewest views whose neighbours share at least ``overlap`` of their
    fov (ceil(360 / (fov * (1 - overlap)))); the overlap actually obtained is ``effective_overlap``.
    """

    name = "e2p"

    @checks_ranges("view")
    def __init__(
        self,
        fov_deg: Annotated[float, FOV_DEG] = 120.0,
        overlap: Annotated[float, OVERLAP] = 0.25,
        size: Annotated[int, VIEW_SIZE] = 112,
        num_views: Annotated[int | None, NUM_VIEWS] = None,
        pitch_deg: Annotated[float, PITCH_DEG] = 0.0,
    ) -> None:
        self.fov_deg, self.overlap, self.size = float(fov_deg), float(overlap), size
        self.pitch_deg = float(pitch_deg)
        self._num_views = num_views if num_views is not None else horizon_view_count(self.fov_deg, self.overlap)
        super().__init__(ring_of_views(self._num_views, self.pitch_deg, self.fov_deg, self.size, "yaw"))

    def settings(self) -> dict:
        return {
            "fov_deg": self.fov_deg,
            "overlap": self.overlap,
            "size": self.size,
            "num_views": self._num_views,
            "pitch_deg": self.pitch_deg,
        }

    @property
    def yaw_step_deg(self) -> float:
        return 360.0 / self._num_views

    @property
    def effective_overlap(self) -> float:
        """Fraction of a view's horizontal fov shared with its neighbour (negative = gap)."""
        return 1.0 - self.yaw_step_deg / self.fov_deg

    def neighbour_pairs(self) -> list[tuple[int, int]]:
        return cyclic_pairs(list(range(self._num_views)))
