"""``anyres_e2p``: one global view of the whole ERP plus perspective tiles in one or more rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from vlm_resampler.panorama.base import (
    FOV_DEG,
    NUM_VIEWS,
    OVERLAP,
    PITCH_DEG,
    VIEW_SIZE,
    ViewMeta,
    ViewStrategy,
    cyclic_pairs,
    horizon_view_count,
)
from vlm_resampler.panorama.geometry import wrap_yaw
from vlm_resampler.panorama.resize import global_erp_view
from vlm_resampler.ranges import checks_ranges


class AnyResViews(ViewStrategy):
    """View 0 is the global ERP (as ``resize``); then, for each pitch in ``row_pitches_deg`` (a row),
    ``num_views`` square perspective tiles around the horizon like ``e2p`` (tile 0 of a row at
    longitude 0, turning right). Tiles are neighbours within a row (cyclic) and with the tile at the
    same longitude in the next row; the global view is nobody's neighbour.
    """

    name = "anyres_e2p"

    @checks_ranges("view")
    def __init__(
        self,
        size: Annotated[int, VIEW_SIZE] = 112,
        fov_deg: Annotated[float, FOV_DEG] = 90.0,
        overlap: Annotated[float, OVERLAP] = 0.5,
        num_views: Annotated[int | None, NUM_VIEWS] = None,
        row_pitches_deg: Sequence[float] = (0.0,),  # each a PITCH_DEG, checked below
    ) -> None:
        self.size, self.fov_deg, self.overlap = size, float(fov_deg), float(overlap)
        if (
            isinstance(row_pitches_deg, (str, bytes))
            or not isinstance(row_pitches_deg, Sequence)
            or not row_pitches_deg
        ):
            raise ValueError(
                f"view.row_pitches_deg={row_pitches_deg!r}: expected a non-empty list of pitches in degrees, e.g. [0.0] or [-30.0, 30.0]"
            )
        for pitch in row_pitches_deg:
            PITCH_DEG.check("view.row_pitches_deg", pitch)
        self.row_pitches_deg = [float(p) for p in row_pitches_deg]
        self.tiles_per_row = num_views if num_views is not None else horizon_view_count(self.fov_deg, self.overlap)
        step = 360.0 / self.tiles_per_row
        meta = [global_erp_view(0, self.size)]
        for pitch in self.row_pitches_deg:
            for i in range(self.tiles_per_row):
                yaw = wrap_yaw(i * step)
                meta.append(
                    ViewMeta(
                        index=len(meta),
                        yaw_deg=yaw,
                        pitch_deg=pitch,
                        fov_deg=self.fov_deg,
                        size=(self.size, self.size),
                        label=f"yaw {yaw:g} pitch {pitch:g}",
                    )
                )
        super().__init__(meta)

    def settings(self) -> dict:
        return {
            "size": self.size,
            "fov_deg": self.fov_deg,
            "overlap": self.overlap,
            "num_views": self.tiles_per_row,
            "row_pitches_deg": self.row_pitches_deg,
        }

    def tile_index(self, row: int, i: int) -> int:
        return 1 + row * self.tiles_per_row + i

    def neighbour_pairs(self) -> list[tuple[int, int]]:
        pairs = []
        for row in range(len(self.row_pitches_deg)):
            pairs += cyclic_pairs([self.tile_index(row, i) for i in range(self.tiles_per_row)])
        for row in range(len(self.row_pitches_deg) - 1):
            pairs += [(self.tile_index(row, i), self.tile_index(row + 1, i)) for i in range(self.tiles_per_row)]
        return pairs
