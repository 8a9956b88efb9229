"""``resize``: the whole ERP squeezed into one global view."""

from __future__ import annotations

from typing import Annotated

from vlm_resampler.panorama.base import VIEW_SIZE, ViewMeta, ViewStrategy
from vlm_resampler.ranges import checks_ranges


class ResizeView(ViewStrategy):
    """One global view: the ERP resized (box-filtered) to ``size`` x ``size``.

    It has no neighbour, so it shares no token with anything: the vision stage's overlap loss has
    nothing to compare and stops with an error; train with stages=[resampler,finetune].
    """

    name = "resize"

    @checks_ranges("view")
    def __init__(self, size: Annotated[int, VIEW_SIZE] = 112) -> None:
        self.size = size
        super().__init__([global_erp_view(0, self.size)])

    def settings(self) -> dict:
        return {"size": self.size}

    def neighbour_pairs(self) -> list[tuple[int, int]]:
        return []


def global_erp_view(index: int, size: int) -> ViewMeta:
    """The whole panorama (360 x 180 degrees around longitude 0) as one square view."""
    return ViewMeta(
        index=index,
        yaw_deg=0.0,
        pitch_deg=0.0,
        fov_deg=360.0,
        size=(size, size),
        is_global=True,
        vfov_deg=180.0,
        projection="equirect",
        label="global",
    )
