"""The overlap VICReg terms behave as their definitions say; the overlap loss pairs what neighbouring
views see of the same directions, for query resamplers too."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlm_resampler.runs import layout
from vlm_resampler.training.losses import overlap_pairs, overlap_vicreg_loss, vicreg_terms

from conftest import run_cli


def test_identical_pairs_have_zero_invariance():
    x = torch.randn(64, 8)
    assert vicreg_terms(x, x.clone(), gamma=1.0)["invariance"] == 0


def test_collapsed_embeddings_pay_the_variance_hinge():
    collapsed = torch.ones(64, 8)
    spread = torch.randn(64, 8) * 3
    assert vicreg_terms(collapsed, collapsed, 1.0)["variance"] > 0.9
    assert vicreg_terms(spread, spread, 1.0)["variance"] < 0.05


def test_correlated_dimensions_pay_the_covariance_term():
    base = torch.randn(256, 1)
    correlated = base.repeat(1, 4)
    independent = torch.randn(256, 4)
    assert (
        vicreg_terms(correlated, correlated, 1.0)["covariance"]
        > vicreg_terms(independent, independent, 1.0)["covariance"] * 10
    )


def test_the_terms_are_computed_in_float32_under_a_16_bit_autocast():
    torch.manual_seed(0)
    x = torch.randn(2000, 64) * 3
    y = x + 0.1 * torch.randn(2000, 64)
    exact = vicreg_terms(x, y, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in a bf16 run
        mixed = vicreg_terms(x, y, 1.0)
        from_bf16_rows = vicreg_terms(x.bfloat16(), y.bfloat16(), 1.0)
    for name, value in exact.items():
        # a bf16 covariance matmul would be 0.2% off here
        assert mixed[name].item() == pytest.approx(value.item(), rel=1e-6), name
        assert mixed[name].dtype == from_bf16_rows[name].dtype == torch.float32, name


# ---- the overlap loss for query resamplers (perceiver, qformer) -----------------------------
# Small widths so that a forward and backward pass is quick.
QUERY_RESAMPLERS = {
    "perceiver": ["resampler=perceiver", "resampler.num_latents=6", "resampler.depth=1", "resampler.heads=2",
                  "resampler.dim_head=8", "resampler.hidden_dim=32", "resampler.latent_dimension=32"],
    "qformer": ["resampler=qformer", "resampler.num_query_tokens=6", "resampler.num_hidden_layers=2",
                "resampler.num_attention_heads=4", "resampler.hidden_dim=32", "resampler.intermediate_size=64",
                "resampler.latent_dimension=32"],
}  # fmt: skip
VICREG = {"invariance": 25.0, "variance": 25.0, "covariance": 1.0, "gamma": 1.0}


def _query_model(smoke_config, resampler: str, *overrides: str):
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.run import resolved_container

    cfg = resolved_container(smoke_config(*QUERY_RESAMPLERS[resampler], *overrides))
    return build_model(cfg["model"], seed=0).eval()


@pytest.mark.parametrize("view", ["view=e2p", "view=anyres_e2p"])  # anyres: a global view, which never takes part
@pytest.mark.parametrize("resampler", sorted(QUERY_RESAMPLERS))
def test_query_resampler_pairs_the_same_query_over_the_shared_region(resampler, view, smoke_config, monkeypatch):
    model = _query_model(smoke_config, resampler, view)
    pairs = model.views.token_correspondence(model.view_grid)
    is_global = [m.is_global for m in model.views.metadata()]
    assert any(is_global) == (view == "view=anyres_e2p")
    assert pairs and not any(is_global[i] for v, w, _, _ in pairs for i in (v, w))
    queries = model.resampler.output_tokens(0)  # 6, whatever the number of tokens attended to
    panoramas = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        a, b = overlap_pairs(model, {"panoramas": panoramas})
    width = a.shape[1]  # the overlap head's
    assert a.shape == b.shape == (2 * len(pairs) * queries, width)
    assert not torch.allclose(a, b, atol=1e-4)  # two views see the region differently

    # Both strips of every pair hold the same features: the same query gives the same row. (Pairs
    # that share no view, so that copying one strip onto the other never overwrites another pair's.)
    disjoint, seen = [], set()
    for pair in pairs:
        if not {pair[0], pair[1]} & seen:
            disjoint.append(pair)
            seen |= {pair[0], pair[1]}
    assert len(disjoint) >= 2
    features = model.view_features(panoramas).detach().clone()
    for v, w, idx_v, idx_w in disjoint:
        features[:, w, idx_w] = features[:, v, idx_v]
    monkeypatch.setattr(model.views, "token_correspondence", lambda grid_hw, device: disjoint)
    monkeypatch.setattr(model, "view_features", lambda _: features)
    with torch.no_grad():
        a, b = overlap_pairs(model, {"panoramas": panoramas})
    assert a.shape[0] == 2 * len(disjoint) * queries and torch.allclose(a, b, atol=1e-5)
    # ... and each pair's queries saw its own strip only: pairs with different content differ.
    per_pair = a.view(2, len(disjoint), queries, width)
    assert not torch.allclose(per_pair[:, 0], per_pair[:, 1], atol=1e-4)


@pytest.mark.parametrize("resampler", sorted(QUERY_RESAMPLERS))
def test_the_overlap_loss_trains_every_parameter_of_a_query_resampler(resampler, smoke_config):
    model = _query_model(smoke_config, resampler).train()
    loss, terms = overlap_vicreg_loss(model, {"panoramas": torch.rand(2, 3, 64, 128)}, VICREG)
    assert torch.isfinite(loss) and set(terms) == {"invariance", "variance", "covariance"}
    loss.backward()
    for name, p in [*model.resampler.named_parameters(), *model.overlap_head.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# Narrow and shallow: what is tested is the stage wiring, and the defaults (qformer: 6 layers of
# 768) took 50 s of the suite here.
SMALL_QUERY_RESAMPLER = {
    "perceiver": ["resampler.depth=1", "resampler.hidden_dim=128", "resampler.num_latents=8"],
    "qformer": [
        "resampler.num_hidden_layers=1",
        "resampler.hidden_dim=128",
        "resampler.intermediate_size=256",
        "resampler.num_query_tokens=8",
    ],
}


@pytest.mark.parametrize("resampler", sorted(QUERY_RESAMPLERS))
def test_smoke_trains_all_three_stages_with_a_query_resampler(resampler, tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli(
        "train.py",
        "debug=smoke",
        f"resampler={resampler}",
        *SMALL_QUERY_RESAMPLER[resampler],
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("vision", "resampler", "finetune"):
        assert (run_dir / stage / layout.METADATA).is_file(), stage
    logged = [json.loads(line) for line in (run_dir / "vision" / layout.TRAIN_LOG).read_text().splitlines()]
    losses = [row["loss"] for row in logged if "loss" in row]
    assert losses and all(math.isfinite(x) for x in losses), logged
    assert all(math.isfinite(row["invariance"]) for row in logged if "invariance" in row)
    print(f"{resampler} vision-stage losses: {losses}")
