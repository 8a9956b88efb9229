"""``sliding_window``: tiles cut straight out of the ERP along the horizon, wrapping at the seam."""

from __future__ import annotations

from typing import Annotated

from vlm_resampler.panorama.base import (
    NUM_VIEWS,
    OVERLAP,
    PITCH_DEG,
    VIEW_SIZE,
    ViewStrategy,
    cyclic_pairs,
    horizon_view_count,
    ring_of_views,
)
from vlm_resampler.ranges import Range, checks_ranges

# An ERP tile is no pinhole view: it may span up to the whole circle of longitude, and from pole to pole.
TILE_WIDTH_DEG = Range(float, "degrees in (0, 360)", gt=0, lt=360)
TILE_HEIGHT_DEG = Range(float, "degrees in (0, 180], or null for as high as fov_deg", gt=0, le=180, also=(None,))


class SlidingWindowViews(ViewStrategy):
    """N equirect tiles, ``fov_deg`` degrees of longitude wide and ``height_deg`` of latitude high,
    centred on latitude ``pitch_deg``; tile 0 is centred on longitude 0, tile v+1 is 360/N degrees
    to the right, and a tile across the +-180 seam continues on the other side.

    No reprojection: rows are latitudes, columns longitudes, as in the ERP, so straight lines bend
    like they do in the panorama. ``height_deg=None`` makes the tile as high as it is wide (ERP
    pixels cover equal angles both ways, so the tile is not stretched when resized to a square).
    """

    name = "sliding_window"

    @checks_ranges("view")
    def __init__(
        self,
        fov_deg: Annotated[float, TILE_WIDTH_DEG] = 120.0,
        overlap: Annotated[float, OVERLAP] = 0.25,
        size: Annotated[int, VIEW_SIZE] = 112,
        num_views: Annotated[int | None, NUM_VIEWS] = None,
        pitch_deg: Annotated[float, PITCH_DEG] = 0.0,
        height_deg: Annotated[float | None, TILE_HEIGHT_DEG] = None,
    ) -> None:
        self.fov_deg, self.overlap, self.size = float(fov_deg), float(overlap), size
        self.pitch_deg = float(pitch_deg)
        self.height_deg = self.fov_deg if height_deg is None else float(height_deg)
        if abs(self.pitch_deg) + self.height_deg / 2.0 > 90.0 + 1e-9:
            hint = " (height_deg null = fov_deg)" if height_deg is None else ""
            raise ValueError(
                f"view.pitch_deg={self.pitch_deg:g} with view.height_deg={self.height_deg:g}{hint}: the tile spans "
                f"latitudes {self.pitch_deg - self.height_deg / 2:g}..{self.pitch_deg + self.height_deg / 2:g}; "
                "expected them within [-90, 90] (lower height_deg or move pitch_deg towards 0)"
            )
        self._num_views = num_views if num_views is not None else horizon_view_count(self.fov_deg, self.overlap)
        super().__init__(
            ring_of_views(
                self._num_views,
                self.pitch_deg,
                self.fov_deg,
                self.size,
                "lon",
                vfov_deg=self.height_deg,
                projection="equirect",
            )
        )

    def settings(self) -> dict:
        return {
            "fov_deg": self.fov_deg,
            "overlap": self.overlap,
            "size": self.size,
            "num_views": self._num_views,
            "pitch_deg": self.pitch_deg,
            "height_deg": self.height_deg,
        }

    @property
    def effective_overlap(self) -> float:
        return 1.0 - (360.0 / self._num_views) / self.fov_deg

    def neighbour_pairs(self) -> list[tuple[int, int]]:
        return cyclic_pairs(list(range(self._num_views)))
