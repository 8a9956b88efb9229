"""The overlap VICReg terms behave as their definitions say."""
from __future__ import annotations

import torch

from vlm_resampler.training.losses import vicreg_terms


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
    assert vicreg_terms(correlated, correlated, 1.0)["covariance"] > vicreg_terms(independent, independent, 1.0)["covariance"] * 10
