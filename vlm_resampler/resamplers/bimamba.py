"""Bidirectional Mamba resampler. Each direction is a Mamba-1 mixer with the official parameter
names and shapes (mamba_ssm.modules.mamba_simple.Mamba), so weights move between our path and
the official kernels."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from vlm_resampler.ops.selective_scan import selective_scan
from vlm_resampler.ranges import AT_LEAST_ONE, BOOL, DROPOUT_RATE, Range, checks_ranges
from vlm_resampler.resamplers.base import Resampler, require
from vlm_resampler.resamplers.shape_rules import (
    DROPOUT,
    InferredResampler,
    ShapeInferenceError,
    Shapes,
    Unknown,
    block_indices,
    preview,
    rule,
    shared_value,
    target_of,
    tensor_shape,
)


class MambaMixer(nn.Module):
    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: float) -> None:
        super().__init__()
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16)
        self.d_state = d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        # S4D-real init of A and the standard dt init (dt ~ logU[1e-3, 1e-1], bias = softplus^-1(dt)).
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, L, d_model] -> [N, L, d_model]"""
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # [N, d_inner, L] each
        x = F.silu(self.conv1d(x)[..., :length])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)
        y = selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2))


class BiMambaBlock(nn.Module):
    def __init__(
        self, d_model: int, d_state: int, d_conv: int, expand: float, dropout: float, norm_first: bool, use_ln: bool
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model) if use_ln else nn.Identity()
        self.forward_mamba = MambaMixer(d_model, d_state, d_conv, expand)
        self.backward_mamba = MambaMixer(d_model, d_state, d_conv, expand)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.norm(x) if self.norm_first else x
        forward = self.forward_mamba(u)
        backward = self.backward_mamba(u.flip(1)).flip(1)
        x = x + self.dropout(0.5 * (forward + backward))
        return x if self.norm_first else self.norm(x)


EXPAND = Range(float, "> 0 (d_inner = int(expand * hidden_dim))", gt=0)


class BiMambaResampler(Resampler):
    """input projection -> `depth` bidirectional blocks -> final norm -> output projection."""

    type_name = "bimamba"
    keeps_token_grid = True

    @checks_ranges("resampler")
    def __init__(
        self,
        input_dim: int,
        latent_dimension: int,
        hidden_dim: Annotated[int, AT_LEAST_ONE],
        depth: Annotated[int, AT_LEAST_ONE],
        expand: Annotated[float, EXPAND],
        d_state: Annotated[int, AT_LEAST_ONE],
        d_conv: Annotated[int, AT_LEAST_ONE],
        use_ln: Annotated[bool, BOOL],
        dropout: Annotated[float, DROPOUT_RATE],
        norm_first: Annotated[bool, BOOL],
    ) -> None:
        super().__init__(input_dim, latent_dimension)
        require(
            int(expand * hidden_dim) >= 1,
            "expand",
            expand,
            f"a value with d_inner = int(expand * hidden_dim) >= 1; with hidden_dim={hidden_dim} it is {int(expand * hidden_dim)}",
        )
        self.hidden_dim = hidden_dim
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            BiMambaBlock(hidden_dim, d_state, d_conv, float(expand), float(dropout), bool(norm_first), bool(use_ln))
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(hidden_dim) if use_ln else nn.Identity()
        self.output_proj = nn.Linear(hidden_dim, latent_dimension)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(tokens)
        for block in self.blocks:
            x = block(x)
        return self.output_proj(self.final_norm(x))


# ---- the shape rule: the hyperparameters these weights fix (resamplers/shape_rules.py) ----


@rule("bimamba", lambda s: "input_proj.weight" in s and any(".forward_mamba." in k for k in s))
def infer_bimamba(shapes: Shapes) -> InferredResampler:

    hidden, input_dim = tensor_shape(shapes, "input_proj.weight", 2)
    latent = tensor_shape(shapes, "output_proj.weight", 2)[0]
    blocks = block_indices(shapes, "blocks")
    if not blocks:
        raise ShapeInferenceError(f"bimamba: no blocks.0.* tensors; found {preview(shapes)}")
    mixers = [f"blocks.{i}.{d}_mamba" for i in blocks for d in ("forward", "backward")]
    d_inner = shared_value(
        "d_inner",
        {f"{m}.A_log[0]": tensor_shape(shapes, f"{m}.A_log", 2)[0] for m in mixers}
        | {f"{m}.in_proj.weight[0]/2": tensor_shape(shapes, f"{m}.in_proj.weight", 2)[0] // 2 for m in mixers},
    )
    d_state = shared_value("d_state", {f"{m}.A_log[1]": shapes[f"{m}.A_log"][1] for m in mixers})
    d_conv = shared_value(
        "d_conv", {f"{m}.conv1d.weight[2]": tensor_shape(shapes, f"{m}.conv1d.weight", 3)[2] for m in mixers}
    )
    dt_rank = shared_value(
        "dt_rank", {f"{m}.dt_proj.weight[1]": tensor_shape(shapes, f"{m}.dt_proj.weight", 2)[1] for m in mixers}
    )
    if dt_rank != math.ceil(hidden / 16):
        # MambaMixer derives dt_rank from the width; weights with another rank cannot be rebuilt.
        raise ShapeInferenceError(
            f"{mixers[0]}.dt_proj.weight: dt_rank {dt_rank}, but BiMambaResampler uses ceil(hidden_dim/16) = "
            f"{math.ceil(hidden / 16)} for hidden_dim {hidden} (input_proj.weight {[hidden, input_dim]})"
        )
    use_ln = "final_norm.weight" in shapes
    norms = [i for i in blocks if f"blocks.{i}.norm.weight" in shapes]
    if norms != (blocks if use_ln else []):
        raise ShapeInferenceError(
            f"bimamba: final_norm {'present' if use_ln else 'absent'} but block norms in blocks {norms}"
        )
    expand, exact = expand_for(d_inner, hidden)
    hparams = {
        "input_dim": input_dim,
        "latent_dimension": latent,
        "hidden_dim": hidden,
        "depth": len(blocks),
        "expand": expand,
        "d_state": d_state,
        "d_conv": d_conv,
        "use_ln": use_ln,
    }
    norm_first = Unknown(
        "norm_first",
        use_ln,
        "pre- and post-norm blocks have the same shapes but different outputs"
        if use_ln
        else "use_ln=false: no norm to place",
        True,
    )
    shown = (
        f"{d_inner}/{hidden} = {expand!r}" if exact else f"{expand!r} (float rounding makes {d_inner}/{hidden} miss)"
    )
    notes = (
        f"expand: the weights fix only d_inner = int(expand * hidden_dim) = {d_inner} (any expand in "
        f"[{d_inner}/{hidden}, {d_inner + 1}/{hidden}) gives it); reported as expand = {shown}, which reproduces it",
    )
    return InferredResampler(
        "bimamba",
        target_of(BiMambaResampler),
        hparams,
        (DROPOUT, norm_first),
        {"d_inner": d_inner, "dt_rank": dt_rank},
        notes,
    )


def expand_for(d_inner: int, hidden: int) -> tuple[float, bool]:
    """An expand with int(expand * hidden) == d_inner; True when it is exactly d_inner / hidden."""
    ratio = d_inner / hidden
    if int(ratio * hidden) == d_inner:
        return ratio, True
    # Float rounding put ratio * hidden just below d_inner: aim at the middle of the interval.
    return (d_inner + 0.5) / hidden, False
