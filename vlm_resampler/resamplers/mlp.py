"""Token-wise MLP resampler: no mixing between tokens, so the patch grid is kept."""
from __future__ import annotations

import torch
from torch import nn

from vlm_resampler.resamplers.base import Resampler, require


class MLPResampler(Resampler):
    """`depth` Linear layers; between two of them LayerNorm (if `use_ln`), GELU and dropout."""

    type_name = "mlp"
    keeps_token_grid = True

    def __init__(
        self,
        input_dim: int,
        latent_dimension: int,
        hidden_dim: int,
        depth: int,
        use_ln: bool,
        dropout: float,
    ) -> None:
        super().__init__(input_dim, latent_dimension)
        require(isinstance(hidden_dim, int) and hidden_dim > 0, "hidden_dim", hidden_dim, "a positive int")
        require(isinstance(depth, int) and depth >= 1, "depth", depth, "an int >= 1")
        require(isinstance(use_ln, bool), "use_ln", use_ln, "true or false")
        require(0.0 <= float(dropout) < 1.0, "dropout", dropout, "a float in [0, 1)")
        self.hidden_dim = hidden_dim
        self.depth = depth
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

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens)
