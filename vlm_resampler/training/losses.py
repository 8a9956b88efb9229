"""The two objectives: geometric overlap consistency (vision stage) and answer-only next-token
prediction (resampler and finetune stages)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def vicreg_terms(x: torch.Tensor, y: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """VICReg on paired rows x[i] <-> y[i] ([N, D] each): invariance (MSE), variance hinge on the
    per-dimension std, and the squared off-diagonal covariance scaled by 1/D."""
    invariance = F.mse_loss(x, y)

    def variance(z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        return F.relu(gamma - std).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(dim=0)
        cov = (z.T @ z) / (z.shape[0] - 1)
        off_diagonal = cov - torch.diag(torch.diagonal(cov))
        return off_diagonal.pow(2).sum() / z.shape[1]

    return {
        "invariance": invariance,
        "variance": 0.5 * (variance(x) + variance(y)),
        "covariance": 0.5 * (covariance(x) + covariance(y)),
    }


def overlap_vicreg_loss(model, panoramas: torch.Tensor, weights: dict) -> tuple[torch.Tensor, dict]:
    """Tokens of neighbouring views that see the same directions (from the view geometry, at the
    vision encoder's patch grid) are pulled together through the overlap head."""
    if not model.resampler.keeps_token_grid:
        raise ValueError(
            f"stage vision: the overlap loss needs tokens that keep the patch grid, but "
            f"resampler={model.resampler.type_name} outputs query tokens; drop 'vision' from stages"
        )
    pairs = model.views.token_correspondence(model.view_grid)
    if not pairs:
        raise ValueError(
            "stage vision: the views do not overlap (no token of one view sees a direction that its "
            "neighbour sees); raise view.overlap or view.fov_deg"
        )
    embedded = model.overlap_head(model.encode_views(panoramas))  # [B, V, S, P]
    left = torch.cat([embedded[:, v, idx_v] for v, _, idx_v, _ in pairs], dim=1)
    right = torch.cat([embedded[:, w, idx_w] for _, w, _, idx_w in pairs], dim=1)
    terms = vicreg_terms(left.flatten(0, 1), right.flatten(0, 1), float(weights["gamma"]))
    loss = (
        weights["invariance"] * terms["invariance"]
        + weights["variance"] * terms["variance"]
        + weights["covariance"] * terms["covariance"]
    )
    return loss, {k: v.detach() for k, v in terms.items()}


def next_token_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    logits, targets = model.answer_logits(
        batch["panoramas"], batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    return loss, {}
