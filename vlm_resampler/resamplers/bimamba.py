"""Bidirectional Mamba resampler. Each direction is a Mamba-1 mixer with the official parameter
names and shapes (mamba_ssm.modules.mamba_simple.Mamba), so weights move between our path and
the official kernels."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlm_resampler.ops.selective_scan import selective_scan
from vlm_resampler.resamplers.base import Resampler, require


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
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
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
            x, delta, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2), self.D.float(),
            z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2))


class BiMambaBlock(nn.Module):
    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: float, dropout: float, norm_first: bool, use_ln: bool) -> None:
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


class BiMambaResampler(Resampler):
    """input projection -> `depth` bidirectional blocks -> final norm -> output projection."""

    type_name = "bimamba"
    keeps_token_grid = True

    def __init__(
        self,
        input_dim: int,
        latent_dimension: int,
        hidden_dim: int,
        depth: int,
        expand: float,
        d_state: int,
        d_conv: int,
        use_ln: bool,
        dropout: float,
        norm_first: bool,
    ) -> None:
        super().__init__(input_dim, latent_dimension)
        require(isinstance(hidden_dim, int) and hidden_dim > 0, "hidden_dim", hidden_dim, "a positive int")
        require(isinstance(depth, int) and depth >= 1, "depth", depth, "an int >= 1")
        require(float(expand) > 0, "expand", expand, "> 0 (d_inner = int(expand * hidden_dim))")
        require(int(expand * hidden_dim) >= 1, "expand", expand,
                f"a value with d_inner = int(expand * hidden_dim) >= 1; with hidden_dim={hidden_dim} it is {int(expand * hidden_dim)}")
        require(isinstance(d_state, int) and d_state >= 1, "d_state", d_state, "an int >= 1")
        require(isinstance(d_conv, int) and d_conv >= 1, "d_conv", d_conv, "an int >= 1")
        require(0.0 <= float(dropout) < 1.0, "dropout", dropout, "a float in [0, 1)")
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
