"""Tests for vlm_resampler.panorama.geometry: conventions, sampling plans, parity with py360convert."""

from __future__ import annotations

import math

import numpy as np
import py360convert
import pytest
import torch
import torch.nn.functional as F

import vlm_resampler.panorama
from vlm_resampler.panorama.geometry import (
    directions_to_lonlat,
    e2p,
    lonlat_to_directions,
    pad_erp,
    plan_erp_sampling,
    project_directions,
    sample_erp,
    sample_erp_plan,
    view_directions,
    view_sampling_grid,
    view_xy_to_pixel,
)


def smooth_erp(height: int = 128, width: int = 256, seed: int = 0) -> torch.Tensor:
    """Random smooth [3, H, W] image in [0, 1] (upsampled coarse noise)."""
    coarse = torch.rand(1, 3, 8, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)


# The largest difference from py360convert allowed on [0, 1] float64 images: py360convert builds its
# rays in float32 (utils.xyzpers), so its sample positions carry float32 rounding (measured at most
# 1.9e-5 here, 5 Dec 2026); with float64 rays on both sides the two would agree to ~1e-12.
PY360_BOUND = 5e-5


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
        assert (ours - ref).abs().max() <= PY360_BOUND, (yaw, pitch, (ours - ref).abs().max())


@pytest.mark.parametrize("yaw", [180.0, -179.5, 179.5])
def test_e2p_wraps_at_the_seam_like_py360convert_on_noise(yaw: float) -> None:
    # White noise makes any seam mistake (e.g. border padding) show up as a large max difference.
    erp = torch.rand(3, 64, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = e2p(erp, 60.0, yaw, 0.0, (32, 32))
    ref = py360_view(erp, 60.0, yaw, 0.0, (32, 32))
    assert (ours - ref).abs().max() <= PY360_BOUND


def test_e2p_float32_and_non_square_output() -> None:
    erp = smooth_erp().float()
    ours = e2p(erp, 90.0, 30.0, 10.0, (40, 72))
    ref = py360_view(erp.double(), 90.0, 30.0, 10.0, (40, 72))
    assert ours.dtype == torch.float32 and ours.shape == (3, 40, 72)
    assert (ours.double() - ref).abs().max() <= 2e-4


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


def test_e2p_is_public_at_package_level() -> None:
    assert vlm_resampler.panorama.e2p is e2p


def test_e2p_parity_over_random_views_including_the_seam() -> None:
    # A [0, 1] image with detail at several scales, 2:1 like a real ERP; float64 on both sides.
    erp = 0.8 * smooth_erp(128, 256, seed=3) + 0.2 * torch.rand(
        3, 128, 256, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    rng = np.random.default_rng(0)
    yaws = np.concatenate([rng.uniform(-180.0, 180.0, 12), [-180.0, 180.0, 179.9, -179.9]])
    pitches = np.concatenate([rng.uniform(-80.0, 80.0, 12), [-80.0, 80.0, 0.0, 45.0]])
    for yaw, pitch in zip(yaws, pitches):
        fov = float(rng.uniform(40.0, 130.0))
        ours = e2p(erp, fov, float(yaw), float(pitch), (40, 56))
        ref = py360_view(erp, fov, float(yaw), float(pitch), (40, 56))
        assert (ours - ref).abs().max() <= PY360_BOUND, (yaw, pitch, fov, (ours - ref).abs().max())
    # float32 input: the float32 arithmetic adds its own rounding on top.
    ours32 = e2p(erp.float(), 75.0, 170.0, 20.0, (40, 56))
    assert (
        ours32.dtype == torch.float32
        and (ours32.double() - py360_view(erp, 75.0, 170.0, 20.0, (40, 56))).abs().max() <= 2e-4
    )


def test_e2p_on_a_batch_equals_one_by_one() -> None:
    erps = torch.stack([smooth_erp(seed=0), smooth_erp(seed=1)]).float()
    batch = e2p(erps, 80.0, 170.0, -20.0, (24, 32))
    assert batch.shape == (2, 3, 24, 32)
    for i in range(2):
        assert torch.allclose(batch[i], e2p(erps[i], 80.0, 170.0, -20.0, (24, 32)), atol=1e-6)


def test_e2p_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        e2p(torch.rand(8, 16), 90.0, 0.0, 0.0, (8, 8))
    with pytest.raises(TypeError, match="floating point"):
        e2p(torch.zeros(3, 8, 16, dtype=torch.uint8), 90.0, 0.0, 0.0, (8, 8))
    with pytest.raises(ValueError, match="out_hw"):
        e2p(torch.rand(3, 8, 16), 90.0, 0.0, 0.0, (0, 8))


@pytest.mark.parametrize(("yaw", "pitch"), [(180.0, 0.0), (-179.7, 10.0), (0.0, 88.0), (33.0, -89.0)])
def test_sampling_plan_equals_padded_grid_sample(yaw: float, pitch: float) -> None:
    # The plan samples the raw ERP and patches the seam/pole pixels; it must match the simple
    # reference (pad the ERP with its spherical neighbours, then grid_sample) exactly.
    erp = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dirs = view_directions(70.0, yaw, pitch, (20, 24))
    plan = plan_erp_sampling(directions_to_lonlat(dirs), (32, 64))
    assert plan.fix_pos.numel() > 0  # these views do touch the seam or a pole
    ours = sample_erp_plan(erp, plan)
    ref = sample_erp(erp, view_sampling_grid(70.0, yaw, pitch, (20, 24), (32, 64)))
    assert torch.allclose(ours, ref, atol=1e-12)


def test_sampling_plan_rejects_another_erp_size() -> None:
    plan = plan_erp_sampling(directions_to_lonlat(view_directions(90.0, 0.0, 0.0, (4, 4))), (16, 32))
    with pytest.raises(ValueError, match="sampling plan is for an ERP of"):
        sample_erp_plan(torch.rand(1, 3, 8, 16), plan)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_e2p_on_cuda_matches_cpu() -> None:
    erp = smooth_erp().float()
    cpu = e2p(erp, 90.0, -170.0, 30.0, (32, 32))
    gpu = e2p(erp.cuda(), 90.0, -170.0, 30.0, (32, 32))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
