"""Heads that map resampler tokens somewhere else: into the LLM's embedding space, or into the
space where the overlap loss compares neighbouring views."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from vlm_resampler.ranges import AT_LEAST_ONE, Range, checks_ranges

HIDDEN_WIDTH = Range(int, "an int >= 1, or null for the output width", ge=1, also=(None,))


class TokenMLP(nn.Module):
    """Token-wise MLP: `depth` Linear layers with GELU between them (depth 2 = LLaVA's mlp2x_gelu)."""

    # None: it is the projector and the overlap head; PanoramaVLM names the key a refusal is under.
    @checks_ranges(None)
    def __init__(
        self,
        input_dim: Annotated[int, AT_LEAST_ONE],
        output_dim: Annotated[int, AT_LEAST_ONE],
        depth: Annotated[int, AT_LEAST_ONE],
        hidden_dim: Annotated[int | None, HIDDEN_WIDTH] = None,
    ) -> None:
        super().__init__()
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
