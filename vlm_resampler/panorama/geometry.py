"""Sphere <-> perspective-view geometry in pure torch, matching py360convert 1.0.4.

Conventions (checked against ``py360convert/utils.py`` and ``e2p.py``):

* World frame: +x points right (longitude +90 deg), +y up, +z front (longitude 0).
  ``lon = atan2(x, z)`` in [-pi, pi], ``lat = atan2(y, hypot(x, z))`` in [-pi/2, pi/2].
* A view with yaw ``u`` and pitch ``v`` looks at (lon=u, lat=v): positive yaw turns right,
  positive pitch looks up. Its camera-to-world rotation is ``R_y(yaw) @ R_x(-pitch)``.
* ERP pixels: column ``c`` has its centre at ``lon = ((c + 0.5) / W - 0.5) * 2 pi`` (column 0
  sits just right of -180 deg, longitude 0 is the boundary between columns W/2-1 and W/2);
  row ``r`` at ``lat = (0.5 - (r + 0.5) / H) * pi`` (row 0 is the top).
* Perspective views: the field of view spans the *outermost pixel centres*
  (``linspace(-tan(fov/2), tan(fov/2), w)``), not the outer pixel edges. Columns grow to the
  right, rows grow downwards. We call ``view_xy`` the image-oriented plane coordinates scaled so
  that +-1 is the edge of the field of view (= the outermost pixel centres).
* Sampling is bilinear and seamless across the +-180 deg seam and over the poles, like
  py360convert; :func:`plan_erp_sampling` precomputes it once per (views, ERP size) so that
  rendering is one ``grid_sample`` call (:func:`sample_erp_plan`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

FovDeg = float | tuple[float, float]

# One pixel of wrap padding is all bilinear sampling needs: sample coordinates never leave
# [-0.5, W - 0.5] x [-0.5, H - 0.5].
ERP_PAD = 1


def fov_tangents(fov_deg: FovDeg) -> tuple[float, float]:
    """tan(half fov) for (horizontal, vertical); a scalar fov applies to both axes (as in py360convert)."""
    h_fov, v_fov = (fov_deg, fov_deg) if isinstance(fov_deg, (int, float)) else fov_deg
    for name, value in (("horizontal fov_deg", h_fov), ("vertical fov_deg", v_fov)):
        if not 0.0 < float(value) < 180.0:
            raise ValueError(f"{name} must be in (0, 180) degrees, got {value}")
    return math.tan(math.radians(h_fov) / 2.0), math.tan(math.radians(v_fov) / 2.0)


def _check_hw(name: str, hw: tuple[int, int]) -> tuple[int, int]:
    if len(hw) != 2 or any(int(n) != n or n < 1 for n in hw):
        raise ValueError(f"{name} must be two positive integers (height, width), got {hw!r}")
    return int(hw[0]), int(hw[1])


def camera_to_world(yaw_deg: float, pitch_deg: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Rotation [3, 3] taking camera-frame vectors (+z = optical axis) to world-frame vectors."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    rot_y = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], dtype=dtype)
    # R_x(-pitch): tilts the optical axis (0, 0, 1) up to (0, sin p, cos p) for positive pitch.
    rot_x_neg_pitch = torch.tensor([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]], dtype=dtype)
    return rot_y @ rot_x_neg_pitch


def cell_centres(image_len: int, grid_len: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Pixel coordinate of the centre of each of ``grid_len`` equal cells tiling ``image_len`` pixels.

    With ``grid_len == image_len`` these are the pixel indices themselves; with a patch grid
    (e.g. 7 cells over 112 px) they are the patch centres (7.5, 23.5, ...).
    """
    k = torch.arange(grid_len, dtype=dtype)
    return (k + 0.5) * (image_len / grid_len) - 0.5


def pixel_to_view_xy(pixel: Tensor, image_len: int) -> Tensor:
    """Pixel coordinate -> view coordinate in [-1, 1] (+-1 = outermost pixel centres)."""
    return pixel / max(image_len - 1, 1) * 2.0 - 1.0


def view_xy_to_pixel(view_xy: Tensor, image_len: int) -> Tensor:
    """Inverse of :func:`pixel_to_view_xy`."""
    return (view_xy + 1.0) / 2.0 * max(image_len - 1, 1)


def view_directions(
    fov_deg: FovDeg,
    yaw_deg: float,
    pitch_deg: float,
    out_hw: tuple[int, int],
    grid_hw: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Unit world direction [gh, gw, 3] through the centre of each cell of a view.

    ``grid_hw=None`` gives one ray per output pixel (exactly py360convert's rays); a coarser
    ``grid_hw`` (e.g. the vision encoder's patch grid) gives the ray through each patch centre.
    """
    h, w = _check_hw("out_hw", out_hw)
    gh, gw = _check_hw("grid_hw", grid_hw) if grid_hw is not None else (h, w)
    tan_x, tan_y = fov_tangents(fov_deg)
    x = pixel_to_view_xy(cell_centres(w, gw, dtype), w) * tan_x
    y = -pixel_to_view_xy(cell_centres(h, gh, dtype), h) * tan_y  # rows grow downwards, +y is up
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    rays = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1)
    rays = rays / rays.norm(dim=-1, keepdim=True)
    return rays @ camera_to_world(yaw_deg, pitch_deg, dtype).T


def directions_to_lonlat(dirs: Tensor) -> Tensor:
    """World directions [..., 3] -> (longitude, latitude) in radians [..., 2]."""
    x, y, z = dirs.unbind(-1)
    lon = torch.atan2(x, z)
    lat = torch.atan2(y, torch.hypot(x, z))
    return torch.stack([lon, lat], dim=-1)


def lonlat_to_directions(lonlat: Tensor) -> Tensor:
    """(longitude, latitude) in radians [..., 2] -> unit world directions [..., 3]."""
    lon, lat = lonlat.unbind(-1)
    cos_lat = torch.cos(lat)
    return torch.stack([cos_lat * torch.sin(lon), torch.sin(lat), cos_lat * torch.cos(lon)], dim=-1)


def lonlat_to_erp_pixels(lonlat: Tensor, erp_hw: tuple[int, int]) -> Tensor:
    """(lon, lat) radians [..., 2] -> continuous ERP pixel coordinates (column, row) [..., 2]."""
    h, w = _check_hw("erp_hw", erp_hw)
    lon, lat = lonlat.unbind(-1)
    col = (lon / (2.0 * math.pi) + 0.5) * w - 0.5
    row = (0.5 - lat / math.pi) * h - 0.5
    return torch.stack([col, row], dim=-1)


def lonlat_to_erp_grid(lonlat: Tensor, erp_hw: tuple[int, int], pad: int = ERP_PAD) -> Tensor:
    """(lon, lat) radians [..., 2] -> ``F.grid_sample`` grid (align_corners=False) [..., 2].

    The grid addresses the ERP *after* :func:`pad_erp` with the same ``pad``; with ``pad=0`` it
    addresses the raw ERP (then the seam is not handled by bilinear sampling).
    """
    h, w = _check_hw("erp_hw", erp_hw)
    col, row = lonlat_to_erp_pixels(lonlat, erp_hw).unbind(-1)
    grid_x = (2.0 * (col + pad) + 1.0) / (w + 2 * pad) - 1.0
    grid_y = (2.0 * (row + pad) + 1.0) / (h + 2 * pad) - 1.0
    return torch.stack([grid_x, grid_y], dim=-1)


def pad_erp(erp: Tensor, pad: int = ERP_PAD) -> Tensor:
    """Pad an ERP [..., C, H, W] by ``pad`` pixels on every side with its spherical neighbours.

    Left/right wrap around the seam; above the top row (and below the bottom row) lies the same
    latitude band on the other side of the pole, i.e. the row mirrored and rolled by W/2.
    This is what py360convert does, and it is what makes bilinear sampling seamless.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return erp
    h, w = erp.shape[-2:]
    if pad > h or pad > w:
        raise ValueError(f"pad={pad} exceeds the ERP size (H={h}, W={w})")
    top = torch.roll(torch.flip(erp[..., :pad, :], dims=[-2]), shifts=w // 2, dims=-1)
    bottom = torch.roll(torch.flip(erp[..., -pad:, :], dims=[-2]), shifts=w // 2, dims=-1)
    rows_padded = torch.cat([top, erp, bottom], dim=-2)
    return torch.cat([rows_padded[..., -pad:], rows_padded, rows_padded[..., :pad]], dim=-1)


def project_directions(dirs: Tensor, fov_deg: FovDeg, yaw_deg: float, pitch_deg: float) -> tuple[Tensor, Tensor]:
    """Where world directions [..., 3] land in a view: (view_xy [..., 2], in_front [...]).

    ``view_xy`` is image-oriented (x grows with the column, y with the row) and +-1 is the edge of
    the field of view; use :func:`view_xy_to_pixel` for pixel coordinates. Points behind the camera
    have ``in_front=False`` and meaningless ``view_xy``.
    """
    tan_x, tan_y = fov_tangents(fov_deg)
    # world -> camera is R^T d; with row vectors that is d @ R.
    cam = dirs @ camera_to_world(yaw_deg, pitch_deg, dirs.dtype).to(dirs.device)
    depth = cam[..., 2]
    in_front = depth > 1e-9
    safe_depth = torch.where(in_front, depth, torch.ones_like(depth))
    view_x = cam[..., 0] / safe_depth / tan_x
    view_y = -cam[..., 1] / safe_depth / tan_y
    return torch.stack([view_x, view_y], dim=-1), in_front


def view_sampling_grid(
    fov_deg: FovDeg,
    yaw_deg: float,
    pitch_deg: float,
    out_hw: tuple[int, int],
    erp_hw: tuple[int, int],
) -> Tensor:
    """float64 ``grid_sample`` grid [h, w, 2] rendering one view from a :func:`pad_erp`-padded ERP."""
    dirs = view_directions(fov_deg, yaw_deg, pitch_deg, out_hw)
    return lonlat_to_erp_grid(directions_to_lonlat(dirs), erp_hw, pad=ERP_PAD)


def sample_erp(erp: Tensor, grid: Tensor) -> Tensor:
    """Reference bilinear lookup through :func:`pad_erp`: erp [B, C, H, W], grid [h, w, 2] -> [B, C, h, w].

    Simple but it copies the whole ERP to pad it, which dominates the cost for a large ERP;
    :func:`sample_erp_plan` gives the same result without the copy.
    """
    _check_erp(erp)
    batch_grid = grid.to(device=erp.device, dtype=erp.dtype).unsqueeze(0).expand(erp.shape[0], -1, -1, -1)
    return F.grid_sample(pad_erp(erp), batch_grid, mode="bilinear", padding_mode="border", align_corners=False)


def _check_erp(erp: Tensor) -> None:
    if erp.ndim != 4:
        raise ValueError(f"erp must be [B, C, H, W], got shape {tuple(erp.shape)}")
    if not erp.is_floating_point():
        raise TypeError(f"erp must be a floating point tensor (e.g. [0, 1] floats), got dtype {erp.dtype}")


@dataclass(frozen=True)
class ErpSamplingPlan:
    """Everything needed to render views from a raw (unpadded) ERP of one size.

    ``grid`` [h, w, 2] addresses the raw ERP (align_corners=False). ``grid_sample`` with border
    padding is exact wherever all four bilinear neighbours lie inside the ERP; the few output
    pixels within half a pixel of the seam or a pole (``fix_pos``, flat indices into [h*w]) are
    recomputed from their four spherical neighbours (``fix_src`` [4, n] flat ERP indices,
    ``fix_weight`` [4, n]), exactly as :func:`pad_erp` + ``grid_sample`` would.
    """

    erp_hw: tuple[int, int]
    grid: Tensor
    fix_pos: Tensor
    fix_src: Tensor
    fix_weight: Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ErpSamplingPlan:
        return ErpSamplingPlan(
            self.erp_hw,
            self.grid.to(device=device, dtype=dtype),
            self.fix_pos.to(device=device),
            self.fix_src.to(device=device),
            self.fix_weight.to(device=device, dtype=dtype),
        )


def plan_erp_sampling(lonlat: Tensor, erp_hw: tuple[int, int]) -> ErpSamplingPlan:
    """Sampling plan for (lon, lat) radians [h, w, 2] (any longitude range) on an ERP of ``erp_hw``."""
    h, w = _check_hw("erp_hw", erp_hw)
    lonlat = lonlat.to(torch.float64)
    lon = torch.remainder(lonlat[..., 0] + math.pi, 2.0 * math.pi) - math.pi
    col, row = lonlat_to_erp_pixels(torch.stack([lon, lonlat[..., 1]], dim=-1), (h, w)).unbind(-1)
    grid = torch.stack([(2.0 * col + 1.0) / w - 1.0, (2.0 * row + 1.0) / h - 1.0], dim=-1)

    col0, row0 = col.floor(), row.floor()
    frac_c, frac_r = (col - col0).flatten(), (row - row0).flatten()
    col0, row0 = col0.long().flatten(), row0.long().flatten()
    outside = (col0 < 0) | (col0 + 1 > w - 1) | (row0 < 0) | (row0 + 1 > h - 1)
    fix_pos = outside.nonzero().flatten()
    col0, row0, frac_c, frac_r = col0[fix_pos], row0[fix_pos], frac_c[fix_pos], frac_r[fix_pos]
    sources, weights = [], []
    for d_row, w_row in ((0, 1.0 - frac_r), (1, frac_r)):
        for d_col, w_col in ((0, 1.0 - frac_c), (1, frac_c)):
            src_row, src_col = row0 + d_row, torch.remainder(col0 + d_col, w)
            # Beyond a pole lies the same latitude band half a turn away (see pad_erp).
            over_pole = (src_row < 0) | (src_row > h - 1)
            src_col = torch.where(over_pole, torch.remainder(src_col - w // 2, w), src_col)
            src_row = src_row.clamp(0, h - 1)
            sources.append(src_row * w + src_col)
            weights.append(w_row * w_col)
    return ErpSamplingPlan((h, w), grid, fix_pos, torch.stack(sources), torch.stack(weights))


def sample_erp_plan(erp: Tensor, plan: ErpSamplingPlan) -> Tensor:
    """Bilinear, seam- and pole-aware lookup: erp [B, C, H, W] float -> [B, C, h, w].

    The plan must be on the ERP's device and dtype (:meth:`ErpSamplingPlan.to`).
    """
    _check_erp(erp)
    b, c, hh, ww = erp.shape
    if (hh, ww) != plan.erp_hw:
        raise ValueError(f"the sampling plan is for an ERP of {plan.erp_hw}, got {(hh, ww)}")
    out = _grid_sample(erp, plan.grid.unsqueeze(0).expand(b, -1, -1, -1))  # one call for the batch
    out = out.reshape(b * c, -1)
    if plan.fix_pos.numel():
        # index_select, not advanced indexing: the latter was ~1000x slower here on CPU.
        gathered = erp.reshape(b * c, hh * ww).index_select(1, plan.fix_src.flatten())
        fixed = (gathered.reshape(b * c, *plan.fix_src.shape) * plan.fix_weight).sum(dim=1)
        out.index_copy_(1, plan.fix_pos, fixed)
    return out.reshape(b, c, *plan.grid.shape[:2])


def _grid_sample(erp: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(erp, grid, mode="bilinear", padding_mode="border", align_corners=False)


@lru_cache(maxsize=64)
def _perspective_plan(
    fov_deg: FovDeg, yaw_deg: float, pitch_deg: float, out_hw: tuple[int, int], erp_hw: tuple[int, int]
) -> ErpSamplingPlan:
    dirs = view_directions(fov_deg, yaw_deg, pitch_deg, out_hw)
    return plan_erp_sampling(directions_to_lonlat(dirs), erp_hw)


def e2p(
    equirect: Tensor,
    fov_deg: FovDeg,
    yaw_deg: float,
    pitch_deg: float,
    out_hw: tuple[int, int],
) -> Tensor:
    """Perspective view of an ERP, like ``py360convert.e2p(mode="bilinear")``.

    ``equirect`` is a float [C, H, W] (or a batch [B, C, H, W]) on any device; the result is
    [C, h, w] (or [B, C, h, w]). Yaw + turns right, pitch + looks up; ``fov_deg`` is one angle
    or (horizontal, vertical). Sampling plans are cached per (view, sizes).
    """
    if equirect.ndim not in (3, 4):
        raise ValueError(f"equirect must be [C, H, W] or [B, C, H, W], got shape {tuple(equirect.shape)}")
    fov_key = fov_deg if isinstance(fov_deg, (int, float)) else tuple(float(f) for f in fov_deg)
    out_key = _check_hw("out_hw", tuple(out_hw))
    erp_hw = (int(equirect.shape[-2]), int(equirect.shape[-1]))
    plan = _perspective_plan(fov_key, float(yaw_deg), float(pitch_deg), out_key, erp_hw)
    batched = equirect if equirect.ndim == 4 else equirect.unsqueeze(0)
    out = sample_erp_plan(batched, plan.to(batched.device, batched.dtype))
    return out if equirect.ndim == 4 else out[0]


def wrap_yaw(yaw_deg: float) -> float:
    """Map a yaw to (-180, 180], so "behind" reads as 180 and "left" as -90."""
    wrapped = math.fmod(yaw_deg, 360.0)
    if wrapped > 180.0:
        wrapped -= 360.0
    elif wrapped <= -180.0:
        wrapped += 360.0
    return wrapped
