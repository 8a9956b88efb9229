"""Views become one LLM token sequence: concat (with separators), dedupe_overlap, and the view
position encoding, periodic in yaw."""

from __future__ import annotations

import torch

from vlm_resampler.models.stitching import view_features
from vlm_resampler.runs.load import build_model
from vlm_resampler.training.run import resolved_container

from conftest import run_cli


def _model(smoke_config, *overrides):
    return build_model(resolved_container(smoke_config(*overrides))["model"], seed=0).eval()


def test_yaw_features_are_periodic():
    f = view_features(
        torch.tensor([359.0, -1.0, 1.0, 90.0]), torch.zeros(4), torch.zeros(4, dtype=torch.bool), harmonics=3
    )
    assert torch.allclose(f[0], f[1], atol=1e-5)  # 359 degrees is -1 degree
    assert (f[0] - f[2]).norm() < 0.2 < (f[0] - f[3]).norm()  # 359 and 1 are neighbours, 90 is not


def test_concat_with_separators_places_one_separator_between_views(smoke_config):
    model = _model(smoke_config, "stitch.separator=true")
    per_view, views = model.tokens_per_view, model.num_views
    assert model.tokens_per_image == views * per_view + views - 1
    emb = model.visual_embeddings(torch.rand(2, 3, 64, 128))
    assert emb.shape == (2, model.tokens_per_image, model.llm.get_input_embeddings().embedding_dim)
    for v in range(1, views):
        at = v * per_view + v - 1
        assert torch.equal(emb[:, at], model.stitch.separator.expand(2, -1))


def test_view_position_makes_identical_views_distinguishable(smoke_config):
    """A uniform panorama gives every view the same pixels: only the view position tells them apart."""
    panorama = torch.full((1, 3, 64, 128), 0.5)
    with_pe = _model(smoke_config, "stitch.view_position=true", "stitch.separator=false")
    without = _model(smoke_config, "stitch.view_position=false", "stitch.separator=false")
    per_view = without.tokens_per_view
    plain = without.visual_embeddings(panorama).view(1, without.num_views, per_view, -1)
    assert torch.allclose(plain[:, 0], plain[:, 1], atol=1e-5)
    coded = with_pe.visual_embeddings(panorama).view(1, with_pe.num_views, per_view, -1)
    assert not torch.allclose(coded[:, 0], coded[:, 1], atol=1e-3)


def test_dedupe_overlap_keeps_each_direction_once(smoke_config):
    model = _model(smoke_config, "stitch=dedupe_overlap", "stitch.separator=false", "stitch.view_position=false")
    pairs = model.views.token_correspondence(model.view_grid)
    n_pairs = sum(len(idx_v) for _, _, idx_v, _ in pairs)
    full = model.num_views * model.tokens_per_view
    assert 0 < full - model.tokens_per_image <= n_pairs
    panoramas = torch.rand(2, 3, 64, 128)
    tokens = model.encode_views(panoramas)
    merged = model.stitch.merge(tokens)
    assert merged.shape == (2, model.tokens_per_image, model.resampler.latent_dimension)
    # The first pair's first token: the kept copy is the mean of both views' tokens.
    v, w, idx_v, idx_w = pairs[0]
    a, b = int(idx_v[0]), int(idx_w[0])
    flat = v * model.tokens_per_view + a
    assert model.stitch.keep[flat] and not model.stitch.keep[w * model.tokens_per_view + b]
    at = int(model.stitch.keep[:flat].sum())  # its place once the dropped tokens are gone
    assert torch.allclose(merged[:, at], 0.5 * (tokens[:, v, a] + tokens[:, w, b]), atol=1e-6)
    assert model.visual_embeddings(panoramas).shape[1] == model.tokens_per_image


def test_dedupe_overlap_refuses_query_tokens_before_anything_is_built(tmp_path):
    done = run_cli(
        "train.py", "debug=smoke", "stitch=dedupe_overlap", "resampler=perceiver", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert done.returncode == 2
    assert "resampler=perceiver outputs query tokens" in done.stderr and "use stitch=concat" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_global_view_is_told_apart_from_the_tile_facing_the_same_way():
    f = view_features(torch.tensor([0.0, 0.0]), torch.zeros(2), torch.tensor([True, False]), harmonics=2)
    assert not torch.allclose(f[0], f[1])
