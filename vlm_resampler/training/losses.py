"""The two objectives: geometric overlap consistency (vision stage) and answer-only next-token
prediction (resampler and finetune stages)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vicreg_terms(x: torch.Tensor, y: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """VICReg on paired rows x[i] <-> y[i] ([N, D] each): invariance (MSE), variance hinge on the
    per-dimension std, and the squared off-diagonal covariance scaled by 1/D.

    In float32 with autocast off, whatever the run's precision: under bf16 autocast the covariance's
    matmul (a sum over all N rows) came out in bf16, 0.2% off at N=2000 (tests/test_losses.py), and
    fp16 would overflow at 65504."""

    def variance(z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        return F.relu(gamma - std).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(dim=0)
        cov = (z.T @ z) / (z.shape[0] - 1)
        off_diagonal = cov - torch.diag(torch.diagonal(cov))
        return off_diagonal.pow(2).sum() / z.shape[1]

    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        return {
            "invariance": F.mse_loss(x, y),
            "variance": 0.5 * (variance(x) + variance(y)),
            "covariance": 0.5 * (covariance(x) + covariance(y)),
        }


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Under DDP: the rows of every process's batch, in rank order (= the global batch's order).

    VICReg's variance and covariance are statistics of the whole batch, so each process computes
    the loss of the global batch. Gradients flow back to every process's own rows (summed over the
    processes by the all_gather's backward); DDP's averaging then gives the gradient that one
    process with the global batch would compute."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed._functional_collectives import all_gather_single

    return all_gather_single(x.contiguous(), 0, dist.group.WORLD)


def overlap_pairs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows the overlap loss pulls together: a[i] and b[i] ([N, P] each, through the overlap
    head) summarise the same directions seen from two neighbouring views (the correspondence of
    the view geometry at the vision encoder's patch grid; global views never take part).

    - A resampler that keeps the patch grid resamples whole views; a[i], b[i] are its tokens at
      corresponding positions (idx_v[i] of view v, idx_w[i] of view w).
    - A query resampler (perceiver, qformer: its tokens have no direction) resamples, for each
      neighbour pair (v, w), only the overlap: the vision encoder's tokens of view v at idx_v
      and of view w at idx_w (same directions, same order), each strip on its own, so that the
      queries attend to that region alone; a[i], b[i] are the same query of the two strips.

    Rows are ordered batch item, then pair, then token (or query)."""
    pairs = model.views.token_correspondence(model.view_grid, model.device)
    if not pairs:
        raise ValueError(
            f"stage vision: the views ({type(model.views).__name__}) do not overlap: no token of one view sees "
            "a direction that its neighbour sees. Use a view strategy with overlapping views (and raise "
            "its overlap), or stages=[resampler,finetune]"
        )
    features = view_features_of(model, batch)  # [B, V, S, D]
    if model.resampler.keeps_token_grid:
        embedded = model.overlap_head(model.encode_features(features))  # [B, V, S, P]
        left = torch.cat([embedded[:, v, idx_v] for v, _, idx_v, _ in pairs], dim=1)
        right = torch.cat([embedded[:, w, idx_w] for _, w, _, idx_w in pairs], dim=1)
        return left.flatten(0, 1), right.flatten(0, 1)
    b = features.shape[0]
    # Strips of equal length go through the resampler together: one call per distinct overlap size.
    by_length: dict[int, list[int]] = {}
    for k, (_, _, idx_v, _) in enumerate(pairs):
        by_length.setdefault(len(idx_v), []).append(k)
    left: dict[int, torch.Tensor] = {}
    right: dict[int, torch.Tensor] = {}
    for group in by_length.values():
        strips = [features[:, pairs[k][0], pairs[k][2]] for k in group]  # of views v: [B, n, D] each
        strips += [features[:, pairs[k][1], pairs[k][3]] for k in group]  # of views w
        chunks = model.overlap_head(model.resampler(torch.cat(strips))).split(b)  # [B, Q, P] each
        for j, k in enumerate(group):
            left[k], right[k] = chunks[j], chunks[len(group) + j]
    order = range(len(pairs))
    return (
        torch.cat([left[k] for k in order], dim=1).flatten(0, 1),  # [B * pairs * Q, P]
        torch.cat([right[k] for k in order], dim=1).flatten(0, 1),
    )


def overlap_vicreg_loss(model, batch: dict, weights: dict) -> tuple[torch.Tensor, dict]:
    """VICReg between the paired rows of `overlap_pairs`: what neighbouring views see of the same
    directions is pulled together through the overlap head."""
    left, right = overlap_pairs(model, batch)
    left, right = gather_rows(left), gather_rows(right)
    terms = vicreg_terms(left, right, float(weights["gamma"]))
    loss = (
        weights["invariance"] * terms["invariance"]
        + weights["variance"] * terms["variance"]
        + weights["covariance"] * terms["covariance"]
    )
    return loss, {k: v.detach() for k, v in terms.items()}


def view_features_of(model, batch: dict) -> torch.Tensor:
    """The vision encoder's view features of the batch: cached ones when the batch carries them."""
    if "view_features" in batch:
        return batch["view_features"]
    return model.view_features(batch["panoramas"])


def visual_embeddings_of(model, batch: dict) -> torch.Tensor:
    return model.visual_embeddings(view_features=view_features_of(model, batch))


def next_token_loss(
    model, batch: dict, num_items: torch.Tensor | int | None = None, visual: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the batch's answer tokens; with `num_items` (the answer tokens of
    the whole optimizer step: all accumulation steps, all processes), their sum over it, so that
    every answer token weighs the same however the step is split. `visual`: the batch's visual
    embeddings when the caller has them already."""
    if visual is None:
        visual = visual_embeddings_of(model, batch)
    logits, targets = model.answer_logits(visual, batch["input_ids"], batch["attention_mask"], batch["labels"])
    if num_items is None:
        return F.cross_entropy(logits.float(), targets), {}
    return F.cross_entropy(logits.float(), targets, reduction="sum") / num_items, {}


def answer_losses(model, batch: dict) -> torch.Tensor:
    """[B]: each row's mean cross-entropy over its own answer tokens (an eval's per-example loss,
    so that every example weighs the same whatever its length or batch)."""
    logits, targets = model.answer_logits(
        visual_embeddings_of(model, batch), batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    per_token = F.cross_entropy(logits.float(), targets, reduction="none")
    # answer_logits keeps the answer positions in row order: row i owns the next counts[i] of them
    counts = (batch["labels"][:, 1:] != -100).sum(dim=1)
    if int(counts.sum()) != len(targets) or not bool((counts > 0).all()):
        raise ValueError(f"answer tokens per row {counts.tolist()} do not add up to the {len(targets)} scored")
    rows = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    return per_token.new_zeros(len(counts)).index_add_(0, rows, per_token) / counts


def object_code_loss(visual: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per visual token: squared error (mean over the width) + (1 - cosine), averaged. `target`:
    the object-code layout (models/object_codes.py) of the same shape as `visual`."""
    if visual.shape != target.shape:
        raise ValueError(
            f"object-code target of shape {list(target.shape)} for visual tokens of shape {list(visual.shape)}"
        )
    return F.mse_loss(visual, target) + (1.0 - F.cosine_similarity(visual, target, dim=-1)).mean()
