"""View strategies: how an ERP panorama is cut into the views a vision encoder sees.

Only the ``e2p`` horizon strategy (:class:`HorizonViews`) exists for now; :class:`ViewStrategy`
is the interface later strategies (cubemap, sliding window, anyres) will implement.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from vlm_resampler.panorama.geometry import (
    project_directions,
    sample_erp,
    view_directions,
    view_sampling_grid,
    view_xy_to_pixel,
    wrap_yaw,
)

TokenPairs = list[tuple[int, int, Tensor, Tensor]]


@dataclass(frozen=True)
class ViewMeta:
    """Where one view looks. ``size`` is (height, width) in pixels."""

    index: int
    yaw_deg: float
    pitch_deg: float
    fov_deg: float
    size: tuple[int, int]
    is_global: bool = False


class ViewStrategy(ABC):
    """Turns an ERP into a fixed list of views and knows which view tokens see the same direction."""

    name: str

    @abstractmethod
    def views(self, erp: Tensor) -> Tensor:
        """ERP [C, H, W] or [B, C, H, W] -> views [V, C, h, w] or [B, V, C, h, w]."""

    @abstractmethod
    def metadata(self) -> list[ViewMeta]:
        """One :class:`ViewMeta` per view, in output order."""

    @abstractmethod
    def token_correspondence(self, grid_hw: tuple[int, int]) -> TokenPairs:
        """For each neighbour pair (v, w): flat token indices ``idx_v``, ``idx_w`` seeing the same direction."""

    @property
    def num_views(self) -> int:
        return len(self.metadata())


def _token_cell(view_xy: Tensor, image_len: int, grid_len: int) -> tuple[Tensor, Tensor]:
    """Cell index along one axis that a view coordinate falls in, and whether it is inside the image.

    Nearest token centre in the image plane == the cell containing the point, because cells
    are a regular grid; the image covers pixel coordinates [-0.5, image_len - 0.5).
    """
    pixel = view_xy_to_pixel(view_xy, image_len)
    scaled = (pixel + 0.5) * (grid_len / image_len)
    inside = (scaled >= 0) & (scaled < grid_len)
    return scaled.floor().clamp(0, grid_len - 1).long(), inside


def _nearest_tokens(
    dirs: Tensor, meta: ViewMeta, grid_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Flat token index in view ``meta`` nearest to each direction [..., 3], and a validity mask."""
    view_xy, in_front = project_directions(dirs, meta.fov_deg, meta.yaw_deg, meta.pitch_deg)
    col, col_inside = _token_cell(view_xy[..., 0], meta.size[1], grid_hw[1])
    row, row_inside = _token_cell(view_xy[..., 1], meta.size[0], grid_hw[0])
    return row * grid_hw[1] + col, in_front & col_inside & row_inside


def mutual_token_pairs(
    meta_a: ViewMeta, meta_b: ViewMeta, grid_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """One-to-one token pairs (flat indices) between two views: mutual nearest neighbours.

    Each token centre of view a is projected into view b and snapped to the nearest token there,
    and vice versa; a pair is kept only when both snaps agree.
    """
    num_tokens = grid_hw[0] * grid_hw[1]
    dirs_a = view_directions(meta_a.fov_deg, meta_a.yaw_deg, meta_a.pitch_deg, meta_a.size, grid_hw)
    dirs_b = view_directions(meta_b.fov_deg, meta_b.yaw_deg, meta_b.pitch_deg, meta_b.size, grid_hw)
    a_to_b, a_valid = _nearest_tokens(dirs_a.reshape(-1, 3), meta_b, grid_hw)
    b_to_a, b_valid = _nearest_tokens(dirs_b.reshape(-1, 3), meta_a, grid_hw)
    idx_a = torch.arange(num_tokens)
    round_trip_ok = b_valid[a_to_b] & (b_to_a[a_to_b] == idx_a)
    keep = a_valid & round_trip_ok
    return idx_a[keep], a_to_b[keep]


class HorizonViews(ViewStrategy):
    """``e2p``: N square perspective views around the horizon, view 0 looking at longitude 0.

    Views are ordered left to right (view v+1 is turned right of view v), and neighbours overlap by
    ``effective_overlap`` of a view's horizontal field of view.
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
        if not 0.0 < fov_deg < 180.0:
            raise ValueError(f"fov_deg must be in (0, 180) degrees, got {fov_deg}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if int(size) != size or size < 8:
            raise ValueError(f"size must be an integer >= 8 pixels, got {size}")
        if num_views is not None and (int(num_views) != num_views or num_views < 1):
            raise ValueError(f"num_views must be an integer >= 1 or None, got {num_views}")
        if not -90.0 <= pitch_deg <= 90.0:
            raise ValueError(f"pitch_deg must be in [-90, 90] degrees, got {pitch_deg}")
        self.fov_deg = float(fov_deg)
        self.overlap = float(overlap)
        self.size = int(size)
        self.pitch_deg = float(pitch_deg)
        # The 1e-9 keeps e.g. fov 90 / overlap 0 at exactly 4 views despite float rounding.
        self._num_views = (
            int(num_views)
            if num_views is not None
            else math.ceil(360.0 / (self.fov_deg * (1.0 - self.overlap)) - 1e-9)
        )
        step = 360.0 / self._num_views
        self._meta = [
            ViewMeta(
                index=i,
                yaw_deg=wrap_yaw(i * step),
                pitch_deg=self.pitch_deg,
                fov_deg=self.fov_deg,
                size=(self.size, self.size),
                is_global=False,
            )
            for i in range(self._num_views)
        ]
        self._grid_cache: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}
        self._pair_cache: dict[tuple[int, int], TokenPairs] = {}

    def __repr__(self) -> str:
        return (
            f"HorizonViews(fov_deg={self.fov_deg}, overlap={self.overlap}, size={self.size}, "
            f"num_views={self._num_views}, pitch_deg={self.pitch_deg})"
        )

    @property
    def num_views(self) -> int:
        return self._num_views

    @property
    def yaw_step_deg(self) -> float:
        return 360.0 / self._num_views

    @property
    def effective_overlap(self) -> float:
        """Fraction of a view's horizontal fov shared with its neighbour (negative = gap)."""
        return 1.0 - self.yaw_step_deg / self.fov_deg

    def metadata(self) -> list[ViewMeta]:
        return list(self._meta)

    def sampling_grid(self, erp_hw: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """All views' sampling grids side by side [h, V*w, 2], cached per (H, W, device, dtype)."""
        key = (int(erp_hw[0]), int(erp_hw[1]), torch.device(device), dtype)
        if key not in self._grid_cache:
            grids = [
                view_sampling_grid(m.fov_deg, m.yaw_deg, m.pitch_deg, m.size, erp_hw) for m in self._meta
            ]
            self._grid_cache[key] = torch.cat(grids, dim=1).to(device=device, dtype=dtype)
        return self._grid_cache[key]

    def views(self, erp: Tensor) -> Tensor:
        if erp.ndim not in (3, 4):
            raise ValueError(f"erp must be [C, H, W] or [B, C, H, W], got shape {tuple(erp.shape)}")
        batched = erp if erp.ndim == 4 else erp.unsqueeze(0)
        grid = self.sampling_grid(tuple(batched.shape[-2:]), batched.device, batched.dtype)
        strip = sample_erp(batched, grid)  # [B, C, h, V*w]: one grid_sample for every view
        b, c, h, _ = strip.shape
        out = strip.reshape(b, c, h, self._num_views, self.size).permute(0, 3, 1, 2, 4)
        return out if erp.ndim == 4 else out[0]

    def token_correspondence(self, grid_hw: tuple[int, int]) -> TokenPairs:
        """Pairs for every cyclic neighbour (v, (v+1) % N); see :func:`mutual_token_pairs`.

        Returned tensors are cached and shared between calls: do not modify them in place.
        """
        gh, gw = int(grid_hw[0]), int(grid_hw[1])
        if gh < 1 or gw < 1 or gh > self.size or gw > self.size:
            raise ValueError(f"grid_hw must be in [1, {self.size}] per axis, got {grid_hw!r}")
        key = (gh, gw)
        if key not in self._pair_cache:
            views = [m for m in self._meta if not m.is_global]
            pairs: TokenPairs = []
            if len(views) >= 2:
                for pos, meta in enumerate(views):
                    nxt = views[(pos + 1) % len(views)]
                    idx_v, idx_next = mutual_token_pairs(meta, nxt, key)
                    pairs.append((meta.index, nxt.index, idx_v, idx_next))
            self._pair_cache[key] = pairs
        return self._pair_cache[key]


def token_centre_directions(meta: ViewMeta, grid_hw: tuple[int, int]) -> Tensor:
    """World direction [gh*gw, 3] of each token centre of a view, flat row-major."""
    return view_directions(meta.fov_deg, meta.yaw_deg, meta.pitch_deg, meta.size, grid_hw).reshape(-1, 3)


__all__ = [
    "HorizonViews",
    "TokenPairs",
    "ViewMeta",
    "ViewStrategy",
    "mutual_token_pairs",
    "token_centre_directions",
]
