"""Heads that map resampler tokens somewhere else: into the LLM's embedding space, or into the
space where the overlap loss compares neighbouring views."""

from __future__ import annotations

import torch
from torch import nn


class TokenMLP(nn.Module):
    """Token-wise MLP: `depth` Linear layers with GELU between them (depth 2 = LLaVA's mlp2x_gelu)."""

    def __init__(self, input_dim: int, output_dim: int, depth: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"projector depth={depth!r}: expected an int >= 1")
        hidden = hidden_dim or output_dim
        widths = [input_dim] + [hidden] * (depth - 1) + [output_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < depth - 1:
                layers.append(nn.GELU())
        self.layers = nn.Sequential(*layers)
        self.input_dim = input_dim
        self.output_dim = output_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens)
