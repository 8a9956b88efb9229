"""``anyres_e2p``: one global view of the whole ERP plus perspective tiles in one or more rows."""

from __future__ import annotations

from collections.abc import Sequence

from vlm_resampler.panorama.base import (
    ViewMeta,
    ViewStrategy,
    check_fov,
    check_num_views,
    check_overlap,
    check_pitch,
    check_size,
    cyclic_pairs,
    horizon_view_count,
)
from vlm_resampler.panorama.geometry import wrap_yaw
from vlm_resampler.panorama.resize import global_erp_view


class AnyResViews(ViewStrategy):
    """View 0 is the global ERP (as ``resize``); then, for each pitch in ``row_pitches_deg`` (a row),
    ``num_views`` square perspective tiles around the horizon like ``e2p`` (tile 0 of a row at
    longitude 0, turning right). Tiles are neighbours within a row (cyclic) and with the tile at the
    same longitude in the next row; the global view is nobody's neighbour.
    """

    name = "anyres_e2p"

    def __init__(
        self,
        size: int = 112,
        fov_deg: float = 90.0,
        overlap: float = 0.5,
        num_views: int | None = None,
        row_pitches_deg: Sequence[float] = (0.0,),
    ) -> None:
        self.size = check_size(size)
        self.fov_deg = check_fov("fov_deg", fov_deg)
        self.overlap = check_overlap(overlap)
        count = check_num_views(num_views)
        if (
            isinstance(row_pitches_deg, (str, bytes))
            or not isinstance(row_pitches_deg, Sequence)
            or not row_pitches_deg
        ):
            raise ValueError(
                f"view.row_pitches_deg={row_pitches_deg!r}: expected a non-empty list of pitches in degrees, e.g. [0.0] or [-30.0, 30.0]"
            )
        self.row_pitches_deg = [check_pitch("row_pitches_deg", p) for p in row_pitches_deg]
        self.tiles_per_row = count if count is not None else horizon_view_count(self.fov_deg, self.overlap)
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
