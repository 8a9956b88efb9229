"""``e2p``: N perspective views around the horizon."""

from __future__ import annotations

from vlm_resampler.panorama.base import (
    ViewStrategy,
    check_fov,
    check_num_views,
    check_overlap,
    check_pitch,
    check_size,
    cyclic_pairs,
    horizon_view_count,
    ring_of_views,
)


class HorizonViews(ViewStrategy):
    """N square perspective views at one pitch, view 0 looking at longitude 0 and view v+1 turned
    right of view v by 360/N degrees.

    ``num_views=None`` takes the fewest views whose neighbours share at least ``overlap`` of their
    fov (ceil(360 / (fov * (1 - overlap)))); the overlap actually obtained is ``effective_overlap``.
    """

    name = "e2p"

    def __init__(
        self,
        fov_deg: float = 120.0,
        overlap: float = 0.25,
        size: int = 112,
        num_views: int | None = None,
        pitch_deg: float = 0.0,
    ) -> None:
        self.fov_deg = check_fov("fov_deg", fov_deg)
        self.overlap = check_overlap(overlap)
        self.size = check_size(size)
        count = check_num_views(num_views)
        self.pitch_deg = check_pitch("pitch_deg", pitch_deg)
        self._num_views = count if count is not None else horizon_view_count(self.fov_deg, self.overlap)
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
