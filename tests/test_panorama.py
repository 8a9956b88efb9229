"""Tests for vlm_resampler.panorama: geometry (parity with py360convert) and the e2p view strategy."""

from __future__ import annotations

import math

import numpy as np
import py360convert
import pytest
import torch
import torch.nn.functional as F

from vlm_resampler.panorama.geometry import (
    directions_to_lonlat,
    e2p,
    lonlat_to_directions,
    pad_erp,
    project_directions,
    view_directions,
    view_xy_to_pixel,
)
from vlm_resampler.panorama.views import (
    HorizonViews,
    ViewMeta,
    mutual_token_pairs,
    token_centre_directions,
)


def smooth_erp(height: int = 128, width: int = 256, seed: int = 0) -> torch.Tensor:
    """Random smooth [3, H, W] image in [0, 1] (upsampled coarse noise)."""
    coarse = torch.rand(1, 3, 8, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def py360_view(erp: torch.Tensor, fov: float, yaw: float, pitch: float, out_hw: tuple[int, int]) -> torch.Tensor:
    view = py360convert.e2p(erp.permute(1, 2, 0).numpy(), fov, yaw, pitch, out_hw, mode="bilinear")
    return torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1)


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("yaw", [0.0, 45.0, -90.0, 179.0, -179.0, 180.0, -180.0])
def test_e2p_matches_py360convert_on_smooth_image(yaw: float) -> None:
    erp = smooth_erp()
    for pitch in (-80.0, -30.0, 0.0, 30.0, 80.0):
        ours = e2p(erp, 100.0, yaw, pitch, (48, 64))
        ref = py360_view(erp, 100.0, yaw, pitch, (48, 64))
        assert ours.shape == ref.shape == (3, 48, 64)
        diff = (ours - ref).abs()
        assert diff.mean() <= 0.01, (yaw, pitch, diff.mean())
        assert diff.max() <= 1e-3, (yaw, pitch, diff.max())  # same sampling points, not just similar


@pytest.mark.parametrize("yaw", [180.0, -179.5, 179.5])
def test_e2p_wraps_at_the_seam_like_py360convert_on_noise(yaw: float) -> None:
    # White noise makes any seam mistake (e.g. border padding) show up as a large max difference.
    erp = torch.rand(3, 64, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = e2p(erp, 60.0, yaw, 0.0, (32, 32))
    ref = py360_view(erp, 60.0, yaw, 0.0, (32, 32))
    assert (ours - ref).abs().max() <= 1e-3


def test_e2p_float32_and_non_square_output() -> None:
    erp = smooth_erp().float()
    ours = e2p(erp, 90.0, 30.0, 10.0, (40, 72))
    ref = py360_view(erp.double(), 90.0, 30.0, 10.0, (40, 72))
    assert ours.dtype == torch.float32 and ours.shape == (3, 40, 72)
    assert (ours.double() - ref).abs().mean() <= 0.01


def test_pad_erp_wraps_columns_and_crosses_the_poles() -> None:
    erp = torch.arange(2 * 4 * 8, dtype=torch.float32).reshape(2, 4, 8)
    padded = pad_erp(erp)
    assert padded.shape == (2, 6, 10)
    inner = padded[:, 1:-1]
    assert torch.equal(inner[..., 0], erp[..., -1]) and torch.equal(inner[..., -1], erp[..., 0])
    assert torch.equal(padded[:, 0, 1:-1], torch.roll(erp[:, 0], 4, dims=-1))
    assert torch.equal(padded[:, -1, 1:-1], torch.roll(erp[:, -1], 4, dims=-1))


def test_view_directions_conventions() -> None:
    dirs = view_directions(90.0, 30.0, 20.0, (5, 5))
    assert dirs.shape == (5, 5, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(5, 5, dtype=torch.float64))
    centre = lonlat_to_directions(torch.tensor([math.radians(30.0), math.radians(20.0)], dtype=torch.float64))
    assert torch.allclose(dirs[2, 2], centre, atol=1e-12)
    lonlat = directions_to_lonlat(dirs)
    assert lonlat[2, 4, 0] > lonlat[2, 0, 0]  # columns grow to the right (east)
    assert lonlat[0, 2, 1] > lonlat[4, 2, 1]  # row 0 is the top
    # py360convert puts the outermost pixel centres exactly on the fov edge.
    flat = view_directions(90.0, 0.0, 0.0, (5, 5))
    assert math.degrees(directions_to_lonlat(flat)[2, 4, 0]) == pytest.approx(45.0)


def test_project_directions_inverts_view_directions() -> None:
    for fov, yaw, pitch in ((90.0, 0.0, 0.0), (120.0, 170.0, -35.0), ((100.0, 70.0), -120.0, 60.0)):
        dirs = view_directions(fov, yaw, pitch, (6, 9))
        view_xy, in_front = project_directions(dirs, fov, yaw, pitch)
        assert bool(in_front.all())
        rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(9.0), indexing="ij")
        assert torch.allclose(view_xy_to_pixel(view_xy[..., 0], 9), cols.double(), atol=1e-9)
        assert torch.allclose(view_xy_to_pixel(view_xy[..., 1], 6), rows.double(), atol=1e-9)
    behind = lonlat_to_directions(torch.tensor([[math.pi, 0.0]], dtype=torch.float64))
    assert not bool(project_directions(behind, 90.0, 0.0, 0.0)[1].any())


def test_view_directions_at_patch_grid_are_patch_centres() -> None:
    tokens = view_directions(120.0, 40.0, 5.0, (112, 112), grid_hw=(7, 7))
    assert tokens.shape == (7, 7, 3)
    view_xy, _ = project_directions(tokens, 120.0, 40.0, 5.0)
    expected = torch.arange(7, dtype=torch.float64) * 16 + 7.5
    assert torch.allclose(view_xy_to_pixel(view_xy[..., 0], 112)[0], expected, atol=1e-9)
    assert torch.allclose(view_xy_to_pixel(view_xy[..., 1], 112)[:, 0], expected, atol=1e-9)
    assert torch.equal(view_directions(90.0, 0, 0, (8, 8), grid_hw=(8, 8)), view_directions(90.0, 0, 0, (8, 8)))


@pytest.mark.parametrize("fov", [0.0, 180.0, -5.0, (90.0, 200.0)])
def test_geometry_rejects_bad_fov(fov: float) -> None:
    with pytest.raises(ValueError, match="fov_deg"):
        view_directions(fov, 0.0, 0.0, (4, 4))


# --------------------------------------------------------------------------- HorizonViews


@pytest.mark.parametrize(
    ("kwargs", "num_views", "yaws", "effective"),
    [
        ({}, 4, [0.0, 90.0, 180.0, -90.0], 0.25),
        ({"fov_deg": 90.0, "overlap": 0.5}, 8, [0, 45, 90, 135, 180, -135, -90, -45], 0.5),
        ({"fov_deg": 90.0, "overlap": 0.0}, 4, [0.0, 90.0, 180.0, -90.0], 0.0),
        ({"fov_deg": 100.0, "overlap": 0.3}, 6, [0, 60, 120, 180, -120, -60], 0.4),
        ({"num_views": 5}, 5, [0, 72, 144, -144, -72], 0.4),
    ],
)
def test_horizon_view_layout(kwargs: dict, num_views: int, yaws: list[float], effective: float) -> None:
    strategy = HorizonViews(**kwargs)
    assert strategy.num_views == num_views
    assert [m.yaw_deg for m in strategy.metadata()] == pytest.approx(yaws)
    assert strategy.effective_overlap == pytest.approx(effective)
    meta = strategy.metadata()[0]
    assert meta == ViewMeta(0, 0.0, 0.0, strategy.fov_deg, (112, 112), False)


def test_horizon_views_shapes_match_e2p_and_batching() -> None:
    strategy = HorizonViews(fov_deg=120.0, overlap=0.25, size=32, pitch_deg=10.0)
    erp = torch.stack([smooth_erp(seed=0), smooth_erp(seed=1)]).float()
    batched = strategy.views(erp)
    assert batched.shape == (2, 4, 3, 32, 32)
    single = strategy.views(erp[1])
    assert single.shape == (4, 3, 32, 32)
    assert torch.allclose(single, batched[1])
    for meta in strategy.metadata():
        expected = e2p(erp[0], meta.fov_deg, meta.yaw_deg, meta.pitch_deg, meta.size)
        assert torch.allclose(batched[0, meta.index], expected, atol=1e-6)


def test_horizon_views_cache_sampling_grids() -> None:
    strategy = HorizonViews(size=16)
    erp = smooth_erp().float()
    strategy.views(erp)
    grid = strategy.sampling_grid((128, 256), erp.device, torch.float32)
    strategy.views(erp.unsqueeze(0))
    assert strategy.sampling_grid((128, 256), erp.device, torch.float32) is grid
    strategy.views(erp.double())
    assert len(strategy._grid_cache) == 2  # one per dtype


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"fov_deg": 0.0}, "fov_deg"),
        ({"fov_deg": 180.0}, "fov_deg"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"size": 4}, "size"),
        ({"num_views": 0}, "num_views"),
        ({"pitch_deg": 95.0}, "pitch_deg"),
    ],
)
def test_horizon_views_validation(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        HorizonViews(**kwargs)


def test_horizon_views_rejects_bad_input_shape() -> None:
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        HorizonViews(size=16).views(torch.rand(128, 256))


# --------------------------------------------------------------------------- token correspondence


def test_token_correspondence_default_config_pairs_column_5_with_column_1() -> None:
    # fov 120, overlap 0.25 -> 4 views 90 deg apart, 30 deg shared per neighbour pair. The overlap
    # covers view-v columns ~4.7-7 and view-(v+1) columns 0-2.3 (of 7); only column 5 <-> column 1
    # are mutual nearest neighbours in every row. (A naive "right k=2 columns <-> left 2 columns"
    # strip would pair 5<->0 and 6<->1, which look at different directions.)
    pairs = HorizonViews().token_correspondence((7, 7))
    assert [(v, w) for v, w, _, _ in pairs] == [(0, 1), (1, 2), (2, 3), (3, 0)]
    for _, _, idx_v, idx_next in pairs:
        assert idx_v.tolist() == [row * 7 + 5 for row in range(7)]
        assert idx_next.tolist() == [row * 7 + 1 for row in range(7)]


@pytest.mark.parametrize(
    ("kwargs", "grid_hw"),
    [
        ({}, (7, 7)),
        ({"fov_deg": 90.0, "overlap": 0.5}, (7, 7)),
        ({"fov_deg": 90.0, "overlap": 0.5, "size": 224}, (14, 14)),
        ({"fov_deg": 100.0, "overlap": 0.3, "size": 256, "pitch_deg": 20.0}, (16, 16)),
    ],
)
def test_token_correspondence_is_geometric_and_one_to_one(kwargs: dict, grid_hw: tuple[int, int]) -> None:
    strategy = HorizonViews(**kwargs)
    meta = strategy.metadata()
    token_width_deg = strategy.fov_deg / grid_hw[1]
    pairs = strategy.token_correspondence(grid_hw)
    assert len(pairs) == strategy.num_views
    for v, w, idx_v, idx_w in pairs:
        assert w == (v + 1) % strategy.num_views
        assert len(idx_v) == len(idx_w) > 0
        assert len(set(idx_v.tolist())) == len(idx_v) and len(set(idx_w.tolist())) == len(idx_w)
        dirs_v = token_centre_directions(meta[v], grid_hw)[idx_v]
        dirs_w = token_centre_directions(meta[w], grid_hw)[idx_w]
        cos = (dirs_v * dirs_w).sum(-1)
        angles = torch.rad2deg(torch.acos(cos.clamp(-1, 1)))
        assert angles.max() < token_width_deg
        # overlap is on the right half of v and the left half of v+1 (an odd grid's centre column may be in both)
        assert (idx_v % grid_hw[1]).min() >= grid_hw[1] // 2
        assert (idx_w % grid_hw[1]).max() <= (grid_hw[1] - 1) // 2
        # mutual nearest neighbours: the same pairs whichever view we start from
        back_w, back_v = mutual_token_pairs(meta[w], meta[v], grid_hw)
        assert sorted(zip(back_v.tolist(), back_w.tolist())) == sorted(zip(idx_v.tolist(), idx_w.tolist()))


@pytest.mark.parametrize("kwargs", [{"fov_deg": 90.0, "overlap": 0.0}, {"fov_deg": 120.0, "overlap": 0.0}])
def test_token_correspondence_empty_without_overlap(kwargs: dict) -> None:
    strategy = HorizonViews(**kwargs)
    assert strategy.effective_overlap == pytest.approx(0.0)
    for _, _, idx_v, idx_w in strategy.token_correspondence((7, 7)):
        assert len(idx_v) == len(idx_w) == 0


def test_token_correspondence_cached_and_validated() -> None:
    strategy = HorizonViews()
    assert strategy.token_correspondence((7, 7)) is strategy.token_correspondence((7, 7))
    assert HorizonViews(num_views=1).token_correspondence((7, 7)) == []
    with pytest.raises(ValueError, match="grid_hw"):
        strategy.token_correspondence((0, 7))
