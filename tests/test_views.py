"""Tests for the view strategies (vlm_resampler.panorama.views), their configs, and show_views."""

from __future__ import annotations

import importlib.util

import numpy as np
import py360convert
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image

from vlm_resampler.config.validate import walk_targets
from vlm_resampler.panorama.geometry import e2p
from vlm_resampler.panorama.overview import footprint_polylines, layout, render_overview
from vlm_resampler.panorama.views import (
    AnyResViews,
    CubemapViews,
    HorizonViews,
    ResizeView,
    SlidingWindowViews,
    ViewMeta,
    mutual_token_pairs,
    token_centre_directions,
    view_pixels,
    view_token_directions,
)
from vlm_resampler.runs.targets import check_targets

from conftest import REPO_ROOT

STRATEGIES = ("e2p", "cubemap", "sliding_window", "anyres_e2p", "resize")


def smooth_erp(height: int = 128, width: int = 256, seed: int = 0) -> torch.Tensor:
    """Random smooth [3, H, W] float32 image in [0, 1] (upsampled coarse noise)."""
    coarse = torch.rand(1, 3, 8, 16, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.acos((a * b).sum(-1).clamp(-1.0, 1.0)))


def patch_angle_deg(meta: ViewMeta, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Per token [gh*gw]: the angle to its nearest horizontal/vertical neighbour's centre (the larger)."""
    dirs = view_token_directions(meta, grid_hw)
    horizontal = angle_deg(dirs[:, 1:], dirs[:, :-1])
    vertical = angle_deg(dirs[1:], dirs[:-1])
    across = torch.cat([horizontal, horizontal[:, -1:]], dim=1)
    down = torch.cat([vertical, vertical[-1:]], dim=0)
    return torch.maximum(across, down).reshape(-1)


# --------------------------------------------------------------------------- e2p (HorizonViews)


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
    assert strategy.metadata()[0] == ViewMeta(0, 0.0, 0.0, strategy.fov_deg, (112, 112), False)


def test_horizon_views_match_e2p_and_batch() -> None:
    strategy = HorizonViews(fov_deg=120.0, overlap=0.25, size=32, pitch_deg=10.0)
    erp = torch.stack([smooth_erp(seed=0), smooth_erp(seed=1)])
    batched = strategy.views(erp)
    assert batched.shape == (2, 4, 3, 32, 32)
    single = strategy.views(erp[1])
    assert single.shape == (4, 3, 32, 32)
    assert torch.allclose(single, batched[1], atol=1e-6)
    for meta in strategy.metadata():
        expected = e2p(erp[0], meta.fov_deg, meta.yaw_deg, meta.pitch_deg, meta.size)
        assert torch.allclose(batched[0, meta.index], expected, atol=1e-6)


def test_sampling_plans_are_cached_per_erp_size_device_and_dtype() -> None:
    strategy = HorizonViews(size=16)
    erp = smooth_erp()
    strategy.views(erp)
    plan = strategy.sampling_plan(0, (128, 256), erp.device, torch.float32)
    strategy.views(erp.unsqueeze(0))
    assert strategy.sampling_plan(0, (128, 256), erp.device, torch.float32) is plan
    strategy.views(erp.double())
    strategy.views(smooth_erp(64, 128))
    assert len(strategy._plan_cache) == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: HorizonViews(fov_deg=0.0), r"view\.fov_deg=0\.0: expected degrees in \(0, 180\)"),
        (lambda: HorizonViews(fov_deg=180.0), r"view\.fov_deg=180\.0"),
        (lambda: HorizonViews(overlap=1.2), r"view\.overlap=1\.2: expected a float in \[0, 1\)"),
        (lambda: HorizonViews(overlap=-0.1), r"view\.overlap=-0\.1"),
        (lambda: HorizonViews(size=4), r"view\.size=4: expected an integer >= 8"),
        (lambda: HorizonViews(num_views=0), r"view\.num_views=0: expected an integer >= 1"),
        (lambda: HorizonViews(pitch_deg=95.0), r"view\.pitch_deg=95\.0: expected degrees in \[-90, 90\]"),
        (lambda: CubemapViews(overlap=0.5), r"view\.overlap=0\.5: expected a float in \[0, 0\.5\)"),
        (lambda: SlidingWindowViews(pitch_deg=40.0), r"view\.pitch_deg=40 with view\.height_deg=120"),
        (lambda: SlidingWindowViews(fov_deg=400.0), r"view\.fov_deg=400\.0: expected degrees in \(0, 360\)"),
        (lambda: AnyResViews(row_pitches_deg=[]), r"view\.row_pitches_deg=\[\]: expected a non-empty list"),
        (lambda: AnyResViews(row_pitches_deg=[0.0, 120.0]), r"view\.row_pitches_deg=120\.0"),
        (lambda: ResizeView(size=12.5), r"view\.size=12\.5"),
    ],
)
def test_strategies_reject_bad_settings_naming_key_value_and_expectation(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_views_rejects_bad_input_shape() -> None:
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        HorizonViews(size=16).views(torch.rand(128, 256))


# --------------------------------------------------------------------------- token correspondence


def test_e2p_default_pairs_column_5_with_column_1() -> None:
    # fov 120, overlap 0.25 -> 4 views 90 deg apart, 30 deg shared per neighbour pair. The overlap
    # covers view-v columns ~4.7-7 and view-(v+1) columns 0-2.3 (of 7); only column 5 <-> column 1
    # are mutual nearest neighbours in every row. (A naive "right k=2 columns <-> left 2 columns"
    # strip would pair 5<->0 and 6<->1, which look at different directions.)
    pairs = HorizonViews().token_correspondence((7, 7))
    assert [(v, w) for v, w, _, _ in pairs] == [(0, 1), (1, 2), (2, 3), (3, 0)]
    for _, _, idx_v, idx_next in pairs:
        assert idx_v.tolist() == [row * 7 + 5 for row in range(7)]
        assert idx_next.tolist() == [row * 7 + 1 for row in range(7)]


CORRESPONDENCE_CASES = [
    (HorizonViews(), (7, 7)),
    (HorizonViews(fov_deg=90.0, overlap=0.5, size=224), (14, 14)),
    (HorizonViews(fov_deg=100.0, overlap=0.3, size=256, pitch_deg=20.0), (16, 16)),
    (CubemapViews(), (7, 7)),
    (CubemapViews(size=224, overlap=0.25), (14, 14)),
    (SlidingWindowViews(), (7, 7)),
    (SlidingWindowViews(fov_deg=90.0, overlap=0.5, size=224, pitch_deg=-10.0, height_deg=60.0), (14, 14)),
    (AnyResViews(), (7, 7)),
    (AnyResViews(size=224, fov_deg=100.0, overlap=0.3, row_pitches_deg=[-35.0, 35.0]), (14, 14)),
]


@pytest.mark.parametrize(("strategy", "grid_hw"), CORRESPONDENCE_CASES, ids=lambda x: repr(x))
def test_token_correspondence_sees_the_same_directions(strategy, grid_hw: tuple[int, int]) -> None:
    """Independent check: the centre directions of paired tokens, each computed from its own view,
    agree within about a patch; pairs are one-to-one and symmetric; global views never appear."""
    meta = strategy.metadata()
    pairs = strategy.token_correspondence(grid_hw)
    assert pairs, "expected overlapping neighbours"
    for v, w, idx_v, idx_w in pairs:
        assert not meta[v].is_global and not meta[w].is_global
        assert len(idx_v) == len(idx_w) > 0
        assert len(set(idx_v.tolist())) == len(idx_v) and len(set(idx_w.tolist())) == len(idx_w)
        dirs_v = token_centre_directions(meta[v], grid_hw)[idx_v]
        dirs_w = token_centre_directions(meta[w], grid_hw)[idx_w]
        within = angle_deg(dirs_v, dirs_w) <= patch_angle_deg(meta[w], grid_hw)[idx_w]
        assert bool(within.all()), angle_deg(dirs_v, dirs_w).max()
        back_w, back_v = mutual_token_pairs(meta[w], meta[v], grid_hw)
        assert sorted(zip(back_v.tolist(), back_w.tolist())) == sorted(zip(idx_v.tolist(), idx_w.tolist()))


def test_token_correspondence_neighbour_structure() -> None:
    cube = CubemapViews(overlap=0.1).token_correspondence((7, 7))
    edges = {frozenset((v, w)) for v, w, _, _ in cube}
    assert len(edges) == 12  # every edge of the cube, each once
    assert all(sum(i in e for e in edges) == 4 for i in range(6))  # each face has 4 neighbours
    anyres = AnyResViews(fov_deg=90.0, overlap=0.5, row_pitches_deg=[-30.0, 30.0])
    pairs = {(v, w) for v, w, _, _ in anyres.token_correspondence((7, 7))}
    assert (1, 2) in pairs and (8, 1) in pairs  # within the lower row, cyclic
    assert (1, 9) in pairs  # same longitude, next row up
    assert all(0 not in pair for pair in pairs)


@pytest.mark.parametrize(
    "strategy",
    [
        HorizonViews(fov_deg=90.0, overlap=0.0),
        CubemapViews(overlap=0.0),
        SlidingWindowViews(fov_deg=90.0, overlap=0.0),
        ResizeView(),
    ],
    ids=repr,
)
def test_token_correspondence_empty_without_overlap(strategy) -> None:
    # Pairs sharing no token are left out, so "no overlap" reads as an empty list (the vision stage's error).
    assert strategy.token_correspondence((7, 7)) == []


def test_token_correspondence_cached_and_validated() -> None:
    strategy = HorizonViews()
    assert strategy.token_correspondence((7, 7)) is strategy.token_correspondence((7, 7))
    # kept on the model's device too (here meta, shapes only), once
    on_device = strategy.token_correspondence((7, 7), torch.device("meta"))
    assert on_device is strategy.token_correspondence((7, 7), "meta")
    assert [(v, w, a.shape, b.shape) for v, w, a, b in on_device] == [
        (v, w, a.shape, b.shape) for v, w, a, b in strategy.token_correspondence((7, 7))
    ]
    assert all(a.device.type == b.device.type == "meta" for _, _, a, b in on_device)
    assert HorizonViews(num_views=1).token_correspondence((7, 7)) == []
    with pytest.raises(ValueError, match="grid_hw"):
        strategy.token_correspondence((0, 7))


# --------------------------------------------------------------------------- cubemap


def test_cubemap_faces_cover_the_sphere() -> None:
    faces = CubemapViews(size=16, overlap=0.0).metadata()
    rng = torch.Generator().manual_seed(0)
    dirs = torch.randn(20000, 3, generator=rng, dtype=torch.float64)
    dirs = torch.cat(
        [dirs / dirs.norm(dim=-1, keepdim=True), torch.eye(3, dtype=torch.float64), -torch.eye(3, dtype=torch.float64)]
    )
    seen = [view_pixels(face, dirs) for face in faces]
    hits = torch.stack([inside for _, inside in seen]).sum(0)
    assert bool((hits >= 1).all())
    # Like py360convert, 90 degrees span the outermost pixel *centres*, so a face reaches half a
    # pixel past the cube edge: directions seen twice lie within a pixel of an edge of both faces.
    for pixels, inside in seen:
        twice = inside & (hits >= 2)
        distance_to_edge = torch.minimum(pixels[twice] + 0.5, 15.5 - pixels[twice]).min(dim=-1).values
        assert bool((distance_to_edge <= 1.0).all())


def test_cubemap_faces_match_py360convert_e2c() -> None:
    erp = smooth_erp(128, 256, seed=5)
    ours = CubemapViews(size=32, overlap=0.0).views(erp)
    ref = py360convert.e2c(
        erp.permute(1, 2, 0).numpy().astype(np.float64), face_w=32, mode="bilinear", cube_format="dict"
    )
    for face, key in enumerate("FRBLUD"):
        expected = torch.from_numpy(np.ascontiguousarray(ref[key])).permute(2, 0, 1).float()
        diff = (ours[face] - expected).abs()
        assert diff.mean() <= 0.01, (key, diff.mean())
        assert diff.max() <= 1e-3, (key, diff.max())


def test_cubemap_overlap_widens_the_faces() -> None:
    assert CubemapViews(overlap=0.1).metadata()[0].fov_deg == pytest.approx(100.0)
    labels = [m.label for m in CubemapViews().metadata()]
    assert labels == ["front", "right", "back", "left", "up", "down"]


# --------------------------------------------------------------------------- sliding window


def test_sliding_window_tile_is_an_erp_crop() -> None:
    # At the tile's own pixel density (no filtering), tile 0 (longitude -45..45, latitude -45..45)
    # is exactly the middle quarter of the ERP's columns and middle half of its rows.
    erp = torch.rand(3, 64, 128, generator=torch.Generator().manual_seed(0))
    tile = SlidingWindowViews(fov_deg=90.0, overlap=0.0, size=32).views(erp)[0]
    assert torch.allclose(tile, erp[:, 16:48, 48:80], atol=1e-5)


def test_sliding_window_wraps_at_the_seam() -> None:
    # Longitudes < 0 dark, > 0 bright: a tile centred on 180 shows the bright right end of the ERP
    # on its left and the dark left end on its right, with nothing else in between.
    erp = torch.zeros(3, 64, 256)
    erp[..., 128:] = 1.0
    strategy = SlidingWindowViews(fov_deg=90.0, overlap=0.0, size=16)
    behind = strategy.views(erp)[2]
    assert strategy.metadata()[2].yaw_deg == 180.0
    assert torch.allclose(behind[..., :8], torch.ones(3, 16, 8)) and torch.allclose(
        behind[..., 8:], torch.zeros(3, 16, 8)
    )
    # Same content as the tile in front after turning the panorama half a turn (box filter included).
    noise = torch.rand(3, 64, 256, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(strategy.views(noise)[2], strategy.views(torch.roll(noise, 128, dims=-1))[0], atol=1e-5)


def test_sliding_window_box_filters_a_large_erp() -> None:
    # 4 ERP pixels per tile pixel: each tile pixel is the mean of its 4x4 block (no aliasing).
    erp = torch.rand(1, 3, 256, 512, generator=torch.Generator().manual_seed(2))
    tile = SlidingWindowViews(fov_deg=90.0, overlap=0.0, size=32).views(erp)[0, 0]
    assert torch.allclose(tile, F.avg_pool2d(erp, 4)[0, :, 16:48, 48:80], atol=1e-5)


# --------------------------------------------------------------------------- resize and anyres


def test_resize_is_the_whole_erp_box_filtered() -> None:
    erp = smooth_erp(128, 256)
    strategy = ResizeView(size=32)
    out = strategy.views(erp)
    assert out.shape == (1, 3, 32, 32)
    assert torch.allclose(out[0], F.adaptive_avg_pool2d(erp, (32, 32)), atol=1e-5)
    meta = strategy.metadata()[0]
    assert meta.is_global and meta.projection == "equirect" and (meta.fov_deg, meta.vfov_deg) == (360.0, 180.0)
    assert strategy.neighbour_pairs() == [] and strategy.token_correspondence((2, 2)) == []


def test_anyres_is_global_view_plus_e2p_tiles() -> None:
    erp = torch.stack([smooth_erp(seed=0), smooth_erp(seed=1)])
    strategy = AnyResViews(size=32, fov_deg=90.0, overlap=0.5, row_pitches_deg=[-30.0, 30.0])
    out = strategy.views(erp)
    assert out.shape == (2, 17, 3, 32, 32)
    meta = strategy.metadata()
    assert [m.is_global for m in meta] == [True] + [False] * 16
    assert torch.allclose(out[:, 0], ResizeView(size=32).views(erp)[:, 0], atol=1e-6)
    lower = HorizonViews(fov_deg=90.0, overlap=0.5, size=32, pitch_deg=-30.0).views(erp)
    upper = HorizonViews(fov_deg=90.0, overlap=0.5, size=32, pitch_deg=30.0).views(erp)
    assert torch.allclose(out[:, 1:9], lower, atol=1e-6) and torch.allclose(out[:, 9:], upper, atol=1e-6)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_view_config_builds_with_the_encoder_size(smoke_config, name: str) -> None:
    cfg = smoke_config(f"view={name}")
    walk_targets(cfg.model.views, "model.views")  # the same signature check as launch/train.py
    check_targets({"views": dict(cfg.model.views)})  # loadable from a run directory
    strategy = instantiate(cfg.model.views, _convert_="all")
    assert strategy.view_size == (cfg.backbone.image_size, cfg.backbone.image_size)
    assert {m.size for m in strategy.metadata()} == {strategy.view_size}
    out = strategy.views(torch.rand(2, 3, 64, 128))
    assert out.shape == (2, strategy.num_views, 3, *strategy.view_size)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "strategy",
    [HorizonViews(size=32), CubemapViews(size=32), SlidingWindowViews(size=32), AnyResViews(size=32)],
    ids=repr,
)
def test_views_on_cuda_match_cpu(strategy) -> None:
    erp = torch.stack([smooth_erp(seed=0), smooth_erp(seed=1)])
    gpu = strategy.views(erp.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), strategy.views(erp), atol=1e-5)


# --------------------------------------------------------------------------- show_views


def test_footprint_is_cut_at_the_seam() -> None:
    meta = HorizonViews(fov_deg=90.0, overlap=0.0).metadata()[2]  # yaw 180: straddles the seam
    lines = footprint_polylines(meta, 400, 200)
    assert len(lines) >= 2
    xs = [x for line in lines for x, _ in line]
    assert min(xs) == pytest.approx(0.0, abs=1e-6) and max(xs) == pytest.approx(400.0, abs=1e-6)
    for line in lines:  # no segment jumps across the picture
        assert all(abs(b[0] - a[0]) < 200 for a, b in zip(line, line[1:]))


def test_render_overview_size_and_content() -> None:
    strategy = CubemapViews(size=32)
    image = render_overview(smooth_erp(64, 128), strategy, width=700)
    assert image.size == (layout(6, 700).width, layout(6, 700).height)


@pytest.fixture(scope="module")
def show_views():
    """launch/show_views.py loaded in this process (same code path as the command, without a
    fresh interpreter's import time)."""
    spec = importlib.util.spec_from_file_location("show_views_cli", REPO_ROOT / "launch" / "show_views.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(("view", "num_views"), [("e2p", 4), ("cubemap", 6)])
def test_show_views_writes_a_png_of_the_expected_size(show_views, tmp_path, capsys, view: str, num_views: int) -> None:
    erp = (smooth_erp(128, 256).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    pano = tmp_path / "pano.png"
    Image.fromarray(erp).save(pano)
    out = tmp_path / f"{view}.png"
    show_views([f"view={view}", "--image", str(pano), "--out", str(out), "--width", "800"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out.resolve())
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (800, layout(num_views, 800).height)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["view=cubemp"], "view=cubemp: no such option"),
        (["view=cubemap", "view.overlp=0.2"], "Did you mean 'overlap'"),
        (
            ["view=cubemap", "view.overlap=0.7"],
            "error: 1 of 1 job(s) have an invalid config; nothing was started.\n"
            "  view.overlap=0.7: expected a float in [0, 0.5)",
        ),
    ],
)
def test_show_views_reports_bad_overrides_like_train(
    show_views, tmp_path, capsys, overrides: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        show_views([*overrides, "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
