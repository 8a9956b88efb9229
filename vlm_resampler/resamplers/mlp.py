"""Token-wise MLP resampler: no mixing between tokens, so the patch grid is kept; or, with `pool`,
the grid averaged down to pool x pool tokens first (MM1's average-pooling connector)."""

from __future__ import annotations

import math
import re
from typing import Annotated

import torch
from torch import nn
from torch.nn import functional as F

from vlm_resampler.ranges import AT_LEAST_ONE, BOOL, DROPOUT_RATE, Range, checks_ranges
from vlm_resampler.resamplers.base import Resampler
from vlm_resampler.resamplers.shape_rules import (
    DROPOUT,
    InferredResampler,
    ShapeInferenceError,
    Shapes,
    Unknown,
    rule,
    shared_value,
    target_of,
    tensor_shape,
)

POOL = Range(int, "null (keep every patch token) or an int >= 1 (a pool x pool grid per view)", ge=1, also=(None,))


class MLPResampler(Resampler):
    """`depth` Linear layers; between two of them LayerNorm (if `use_ln`), GELU and dropout.

    `pool` (null or an int k): average the view's square patch grid to a k x k grid before the MLP
    (adaptive average pooling: k x k tokens per view whatever the grid), plus a learned embedding of
    each pooled cell (`pooled_position`, which also lets the weights alone say k). Pooled tokens no
    longer sit where an input token was, so the model treats them like query tokens (no
    dedupe_overlap; the vision stage compares the pooled shared region of two views). A token set
    that is not a square grid (such a shared region) is pooled in k * k consecutive groups."""

    type_name = "mlp"
    keeps_token_grid = True

    @checks_ranges("resampler")
    def __init__(
        self,
        input_dim: int,
        latent_dimension: int,
        hidden_dim: Annotated[int, AT_LEAST_ONE],
        depth: Annotated[int, AT_LEAST_ONE],
        use_ln: Annotated[bool, BOOL],
        dropout: Annotated[float, DROPOUT_RATE],
        pool: Annotated[int | None, POOL] = None,
    ) -> None:
        super().__init__(input_dim, latent_dimension)
        self.hidden_dim = hidden_dim
        self.depth = depth
        self.pool = pool
        self.keeps_token_grid = pool is None
        if pool is not None:
            self.pooled_position = nn.Parameter(torch.zeros(pool * pool, input_dim))
        widths = [input_dim] + [hidden_dim] * (depth - 1) + [latent_dimension]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < depth - 1:
                if use_ln:
                    layers.append(nn.LayerNorm(widths[i + 1]))
                layers.append(nn.GELU())
                # Always present (even at p=0) so parameter names depend only on depth/use_ln.
                layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)

    def output_tokens(self, input_tokens: int) -> int:
        return input_tokens if self.pool is None else self.pool * self.pool

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        n, s, d = tokens.shape
        side = math.isqrt(s)
        if side * side == s:
            grid = tokens.transpose(1, 2).reshape(n, d, side, side)
            cells = F.adaptive_avg_pool2d(grid, self.pool).flatten(2)
        else:
            cells = F.adaptive_avg_pool1d(tokens.transpose(1, 2), self.pool * self.pool)
        return cells.transpose(1, 2) + self.pooled_position

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens if self.pool is None else self.pooled(tokens))


# ---- the shape rule: the hyperparameters these weights fix (resamplers/shape_rules.py) ----

_MLP_KEY = re.compile(r"layers\.(\d+)\.(weight|bias)$")


@rule(
    "mlp", lambda s: any(_MLP_KEY.match(k) for k in s) and all(_MLP_KEY.match(k) or k == "pooled_position" for k in s)
)
def infer_mlp(shapes: Shapes) -> InferredResampler:

    linears = sorted(int(_MLP_KEY.match(k).group(1)) for k, v in shapes.items() if k.endswith("weight") and len(v) == 2)
    norms = sorted(int(_MLP_KEY.match(k).group(1)) for k, v in shapes.items() if k.endswith("weight") and len(v) == 1)
    depth, use_ln = len(linears), bool(norms)
    # Hidden layer i is Linear, [LayerNorm], GELU, Dropout: the module indices follow from depth and use_ln.
    stride = 4 if use_ln else 3
    expected_linears = [i * stride for i in range(depth)]
    expected_norms = [i * stride + 1 for i in range(depth - 1)] if use_ln else []
    if linears != expected_linears or norms != expected_norms:
        raise ShapeInferenceError(
            f"mlp layers.*: Linear layers at {linears} and LayerNorms at {norms}, but MLPResampler(depth={depth}, "
            f"use_ln={use_ln}) puts them at {expected_linears} and {expected_norms}"
        )
    weights = [tensor_shape(shapes, f"layers.{i}.weight", 2) for i in linears]
    for i, (before, after) in enumerate(zip(weights, weights[1:])):
        if after[1] != before[0]:
            raise ShapeInferenceError(
                f"layers.{linears[i + 1]}.weight {list(after)} does not take the {before[0]} outputs of layers.{linears[i]}.weight"
            )
    hparams = {"input_dim": weights[0][1], "latent_dimension": weights[-1][0], "depth": depth, "pool": None}
    if "pooled_position" in shapes:  # [pool * pool, input_dim]
        cells, width = shapes["pooled_position"]
        pool = math.isqrt(cells)
        if pool * pool != cells or width != hparams["input_dim"]:
            raise ShapeInferenceError(
                f"mlp pooled_position {[cells, width]}: expected [pool * pool, input_dim={hparams['input_dim']}]"
            )
        hparams["pool"] = pool
    unknown = [DROPOUT]
    if depth > 1:
        hparams["hidden_dim"] = shared_value(
            "mlp hidden width", {f"layers.{i}.weight[0]": w[0] for i, w in zip(linears, weights[:-1])}
        )
        hparams["use_ln"] = use_ln
    else:
        # A single Linear: the hidden width and the norms between layers build nothing.
        unknown += [
            Unknown("hidden_dim", False, "depth 1 has no hidden layer", hparams["latent_dimension"]),
            Unknown("use_ln", False, "depth 1 has no norm between layers", False),
        ]
    return InferredResampler("mlp", target_of(MLPResampler), hparams, tuple(unknown))
