"""What every view strategy shares: per-view metadata, the geometry of the two kinds of view,
rendering through cached sampling plans, and the geometric token correspondence.

A view is either
* ``perspective``: a pinhole camera at (yaw, pitch) with horizontal/vertical fov (see geometry.py), or
* ``equirect``: a lon/lat rectangle of the ERP itself, centred at (yaw, pitch), ``fov_deg`` degrees of
  longitude wide and ``vfov_deg`` degrees of latitude high (pixel edges on the rectangle's edges,
  like the ERP's own pixels). The whole ERP is the rectangle 360 x 180 around (0, 0).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from vlm_resampler.panorama.geometry import (
    ErpSamplingPlan,
    camera_to_world,
    cell_centres,
    directions_to_lonlat,
    fov_tangents,
    lonlat_to_directions,
    pixel_to_view_xy,
    plan_erp_sampling,
    project_directions,
    sample_erp_plan,
    view_directions,
    view_xy_to_pixel,
    wrap_yaw,
)
from vlm_resampler.ranges import Range

TokenPairs = list[tuple[int, int, Tensor, Tensor]]
PROJECTIONS = ("perspective", "equirect")


@dataclass(frozen=True)
class ViewMeta:
    """Where one view looks. ``size`` is (height, width) in pixels; ``fov_deg`` is horizontal and
    ``vfov_deg`` vertical (None: same as ``fov_deg``). ``label`` names the view for people."""

    index: int
    yaw_deg: float
    pitch_deg: float
    fov_deg: float
    size: tuple[int, int]
    is_global: bool = False
    vfov_deg: float | None = None
    projection: str = "perspective"
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.vfov_deg is None:
            object.__setattr__(self, "vfov_deg", self.fov_deg)
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection={self.projection!r}: expected one of {PROJECTIONS}")


# --------------------------------------------------------------------------- view geometry


def view_lonlat(meta: ViewMeta, grid_hw: tuple[int, int] | None = None) -> Tensor:
    """(lon, lat) radians [gh, gw, 2] through each pixel (``grid_hw=None``) or cell centre of a view.

    Longitudes are not wrapped (an equirect view across the seam runs past +-pi).
    """
    if meta.projection == "perspective":
        return directions_to_lonlat(
            view_directions((meta.fov_deg, meta.vfov_deg), meta.yaw_deg, meta.pitch_deg, meta.size, grid_hw)
        )
    h, w = meta.size
    gh, gw = grid_hw if grid_hw is not None else (h, w)
    # Pixel-edge convention: cell centre c (in pixels) sits at fraction (c + 0.5) / w of the width.
    lon = meta.yaw_deg + ((cell_centres(w, gw) + 0.5) / w - 0.5) * meta.fov_deg
    lat = meta.pitch_deg + (0.5 - (cell_centres(h, gh) + 0.5) / h) * meta.vfov_deg
    lat_grid, lon_grid = torch.meshgrid(torch.deg2rad(lat), torch.deg2rad(lon), indexing="ij")
    return torch.stack([lon_grid, lat_grid], dim=-1)


def view_token_directions(meta: ViewMeta, grid_hw: tuple[int, int] | None = None) -> Tensor:
    """Unit world direction [gh, gw, 3] through each pixel or cell centre of a view."""
    if meta.projection == "perspective":
        return view_directions((meta.fov_deg, meta.vfov_deg), meta.yaw_deg, meta.pitch_deg, meta.size, grid_hw)
    return lonlat_to_directions(view_lonlat(meta, grid_hw))


def pixel_directions(meta: ViewMeta, pixels: Tensor) -> Tensor:
    """Unit world directions [..., 3] through continuous pixel coordinates (x, y) [..., 2] of a view
    (e.g. points on its border, for drawing its footprint)."""
    h, w = meta.size
    x, y = pixels.to(torch.float64).unbind(-1)
    if meta.projection == "perspective":
        tan_x, tan_y = fov_tangents((meta.fov_deg, meta.vfov_deg))
        rays = torch.stack(
            [pixel_to_view_xy(x, w) * tan_x, -pixel_to_view_xy(y, h) * tan_y, torch.ones_like(x)], dim=-1
        )
        rays = rays / rays.norm(dim=-1, keepdim=True)
        return rays @ camera_to_world(meta.yaw_deg, meta.pitch_deg).T
    lon = meta.yaw_deg + ((x + 0.5) / w - 0.5) * meta.fov_deg
    lat = meta.pitch_deg + (0.5 - (y + 0.5) / h) * meta.vfov_deg
    return lonlat_to_directions(torch.stack([torch.deg2rad(lon), torch.deg2rad(lat)], dim=-1))


def view_pixels(meta: ViewMeta, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Where world directions [..., 3] land in a view: continuous pixel (x, y) [..., 2] and whether
    that point is inside the image (pixel coordinates in [-0.5, size - 0.5))."""
    h, w = meta.size
    if meta.projection == "perspective":
        view_xy, valid = project_directions(dirs, (meta.fov_deg, meta.vfov_deg), meta.yaw_deg, meta.pitch_deg)
        x, y = view_xy_to_pixel(view_xy[..., 0], w), view_xy_to_pixel(view_xy[..., 1], h)
    else:
        lon, lat = directions_to_lonlat(dirs).unbind(-1)
        # Longitude relative to the view centre in [-180, 180): the seam never splits a view.
        rel_lon = torch.remainder(torch.rad2deg(lon) - meta.yaw_deg + 180.0, 360.0) - 180.0
        x = (rel_lon / meta.fov_deg + 0.5) * w - 0.5
        y = (0.5 - (torch.rad2deg(lat) - meta.pitch_deg) / meta.vfov_deg) * h - 0.5
        valid = torch.ones_like(x, dtype=torch.bool)
    inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
    return torch.stack([x, y], dim=-1), valid & inside


def _token_cell(pixel: Tensor, image_len: int, grid_len: int) -> Tensor:
    """Cell index along one axis containing a pixel coordinate (cells tile [-0.5, image_len - 0.5))."""
    return ((pixel + 0.5) * (grid_len / image_len)).floor().clamp(0, grid_len - 1).long()


def _nearest_tokens(dirs: Tensor, meta: ViewMeta, grid_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Flat token index of ``meta`` containing each direction [..., 3], and whether it is in the view.

    Containing cell == nearest token centre in the image plane, because cells form a regular grid.
    """
    pixel, valid = view_pixels(meta, dirs)
    col = _token_cell(pixel[..., 0], meta.size[1], grid_hw[1])
    row = _token_cell(pixel[..., 1], meta.size[0], grid_hw[0])
    return row * grid_hw[1] + col, valid


def mutual_token_pairs(meta_a: ViewMeta, meta_b: ViewMeta, grid_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """One-to-one token pairs (flat indices) between two views: mutual nearest neighbours.

    Each token centre of view a is projected into view b and snapped to the token there, and vice
    versa; a pair is kept only when both snaps agree, so a token never pairs with two others.
    """
    num_tokens = grid_hw[0] * grid_hw[1]
    dirs_a = view_token_directions(meta_a, grid_hw).reshape(-1, 3)
    dirs_b = view_token_directions(meta_b, grid_hw).reshape(-1, 3)
    a_to_b, a_valid = _nearest_tokens(dirs_a, meta_b, grid_hw)
    b_to_a, b_valid = _nearest_tokens(dirs_b, meta_a, grid_hw)
    idx_a = torch.arange(num_tokens)
    keep = a_valid & b_valid[a_to_b] & (b_to_a[a_to_b] == idx_a)
    return idx_a[keep], a_to_b[keep]


def token_centre_directions(meta: ViewMeta, grid_hw: tuple[int, int]) -> Tensor:
    """World direction [gh*gw, 3] of each token centre of a view, flat row-major."""
    return view_token_directions(meta, grid_hw).reshape(-1, 3)


# --------------------------------------------------------------------------- strategies


def horizon_view_count(fov_deg: float, overlap: float) -> int:
    """Views needed around the horizon so neighbours share at least ``overlap`` of their fov."""
    # The 1e-9 keeps e.g. fov 90 / overlap 0 at exactly 4 views despite float rounding.
    return math.ceil(360.0 / (fov_deg * (1.0 - overlap)) - 1e-9)


def ring_of_views(count: int, pitch_deg: float, fov_deg: float, size: int, label: str, **extra) -> list[ViewMeta]:
    """``count`` views equally spaced in yaw from 0, all at one pitch; ``label`` names the yaw."""
    step = 360.0 / count
    return [
        ViewMeta(
            index=i,
            yaw_deg=wrap_yaw(i * step),
            pitch_deg=pitch_deg,
            fov_deg=fov_deg,
            size=(size, size),
            label=f"{label} {wrap_yaw(i * step):g}",
            **extra,
        )
        for i in range(count)
    ]


def cyclic_pairs(indices: list[int]) -> list[tuple[int, int]]:
    """(v, next v) around a closed ring; one pair for two views, none for one."""
    if len(indices) < 2:
        return []
    if len(indices) == 2:
        return [(indices[0], indices[1])]
    return [(v, indices[(i + 1) % len(indices)]) for i, v in enumerate(indices)]


class ViewStrategy(ABC):
    """Turns an ERP into a fixed list of same-sized views, and knows which tokens of neighbouring
    views see the same direction.

    Subclasses build ``self._meta`` (one :class:`ViewMeta` per view, in output order) and say which
    views are neighbours. Rendering: perspective views are sampled straight from the ERP (exactly
    like py360convert); equirect views are first box-filtered down to their own pixel density, since
    a plain bilinear lookup of a 2048-wide ERP into a 224-wide view would alias badly.
    """

    name: str = "views"

    def __init__(self, meta: list[ViewMeta]) -> None:
        sizes = {m.size for m in meta}
        if len(sizes) != 1:
            raise ValueError(f"all views of a strategy must have one size (they are batched), got {sorted(sizes)}")
        self._meta = list(meta)
        self._plan_cache: dict[tuple, ErpSamplingPlan] = {}
        self._pair_cache: dict[tuple, TokenPairs] = {}
        self._groups = self._render_groups()

    # ---- what subclasses describe ------------------------------------------------------
    @abstractmethod
    def neighbour_pairs(self) -> list[tuple[int, int]]:
        """Candidate neighbour pairs (view index, view index); never a global view."""

    def settings(self) -> dict:
        """Constructor arguments, for repr."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

    # ---- metadata ----------------------------------------------------------------------
    def metadata(self) -> list[ViewMeta]:
        return list(self._meta)

    @property
    def num_views(self) -> int:
        return len(self._meta)

    @property
    def view_size(self) -> tuple[int, int]:
        return self._meta[0].size

    # ---- rendering ---------------------------------------------------------------------
    def _render_groups(self) -> list[tuple[tuple[int, ...], tuple[int, int] | None]]:
        """Views rendered by one grid_sample: (indices, pixel density) where the density is the ERP
        size an equirect view needs for one ERP pixel per view pixel (None: perspective)."""
        groups: dict[tuple[int, int] | None, list[int]] = {}
        for m in self._meta:
            density = None
            if m.projection == "equirect":
                density = (
                    math.ceil(m.size[0] * 180.0 / m.vfov_deg - 1e-6),
                    math.ceil(m.size[1] * 360.0 / m.fov_deg - 1e-6),
                )
            groups.setdefault(density, []).append(m.index)
        return [(tuple(idx), density) for density, idx in groups.items()]

    def sampling_plan(
        self, group: int, erp_hw: tuple[int, int], device: torch.device | str, dtype: torch.dtype
    ) -> ErpSamplingPlan:
        """The plan rendering render group ``group`` (all its views side by side) from an ERP of
        ``erp_hw``, cached per (group, ERP size, device, dtype)."""
        key = (group, int(erp_hw[0]), int(erp_hw[1]), torch.device(device), dtype)
        if key not in self._plan_cache:
            indices = self._groups[group][0]
            lonlat = torch.cat([view_lonlat(self._meta[i]) for i in indices], dim=1)
            self._plan_cache[key] = plan_erp_sampling(lonlat, erp_hw).to(device, dtype)
        return self._plan_cache[key]

    def views(self, erp: Tensor) -> Tensor:
        """ERP [C, H, W] or [B, C, H, W] (float) -> views [V, C, h, w] or [B, V, C, h, w]."""
        if erp.ndim not in (3, 4):
            raise ValueError(f"erp must be [C, H, W] or [B, C, H, W], got shape {tuple(erp.shape)}")
        batched = erp if erp.ndim == 4 else erp.unsqueeze(0)
        b, c, hh, ww = batched.shape
        h, w = self.view_size
        pieces, order = [], []
        for group, (indices, density) in enumerate(self._groups):
            source = batched
            if density is not None and (density[0] < hh or density[1] < ww):
                # Box filter (area average): never straddles the seam, unlike a resize kernel.
                source = F.adaptive_avg_pool2d(batched, (min(density[0], hh), min(density[1], ww)))
            plan = self.sampling_plan(group, tuple(source.shape[-2:]), batched.device, batched.dtype)
            strip = sample_erp_plan(source, plan)  # [B, C, h, n*w]: one grid_sample for the group
            pieces.append(strip.reshape(b, c, h, len(indices), w).permute(0, 3, 1, 2, 4))
            order.extend(indices)
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        if order != list(range(len(order))):
            out = out[:, torch.argsort(torch.tensor(order)).to(out.device)]
        return out if erp.ndim == 4 else out[0]

    # ---- overlap ------------------------------------------------------------------------
    def token_correspondence(self, grid_hw: tuple[int, int], device: torch.device | str = "cpu") -> TokenPairs:
        """For each neighbour pair (v, w) that shares at least one token: flat token indices
        ``idx_v``, ``idx_w`` (equal length, one-to-one) seeing the same directions, at the
        encoder's patch grid ``grid_hw``. Global views never appear; pairs without any shared
        token are left out, so an empty list means "no overlap".

        The indices are computed on the CPU and kept on `device` too: indexing a GPU tensor with
        CPU indices copies them to the GPU at every use, a copy that waits for the GPU's queue.
        Returned tensors are cached and shared between calls: do not modify them in place.
        """
        h, w = self.view_size
        gh, gw = int(grid_hw[0]), int(grid_hw[1])
        if not (1 <= gh <= h and 1 <= gw <= w):
            raise ValueError(f"grid_hw={tuple(grid_hw)!r}: expected 1..{h} rows and 1..{w} columns of tokens")
        key = (gh, gw)
        if key not in self._pair_cache:
            pairs: TokenPairs = []
            for v, u in self.neighbour_pairs():
                if self._meta[v].is_global or self._meta[u].is_global:
                    raise AssertionError(f"{type(self).__name__}: global view in neighbour pair {(v, u)}")
                idx_v, idx_u = mutual_token_pairs(self._meta[v], self._meta[u], key)
                if len(idx_v):
                    pairs.append((v, u, idx_v, idx_u))
            self._pair_cache[key] = pairs
        device = torch.device(device)
        if device.type == "cpu":
            return self._pair_cache[key]
        if (key, device) not in self._pair_cache:
            self._pair_cache[key, device] = [(v, u, a.to(device), b.to(device)) for v, u, a, b in self._pair_cache[key]]
        return self._pair_cache[key, device]


# --------------------------------------------------------------------------- parameter ranges
# What a strategy's settings may be (its constructor annotates each with one of these).
VIEW_SIZE = Range(int, "an integer >= 8 (pixels; the vision encoder's image_size)", ge=8)
FOV_DEG = Range(float, "degrees in (0, 180)", gt=0, lt=180)
OVERLAP = Range(float, "a float in [0, 1)", ge=0, lt=1)
NUM_VIEWS = Range(int, "an integer >= 1, or null to derive it from fov_deg and overlap", ge=1, also=(None,))
PITCH_DEG = Range(float, "degrees in [-90, 90]", ge=-90, le=90)
