"""Q-Former resampler (our own module; no BERT config or weights are downloaded): learned query
tokens, pre-norm layers of self-attention among the queries, cross-attention to the view's
tokens every `cross_attention_frequency` layers, and a feed-forward block."""
from __future__ import annotations

import torch
from torch import nn

from vlm_resampler.resamplers.base import Resampler, require


class QFormerLayer(nn.Module):
    def __init__(self, width: int, heads: int, intermediate: int, cross: bool, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(width) if cross else None
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True) if cross else None
        self.ff = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, intermediate), nn.GELU(), nn.Linear(intermediate, width))

    def forward(self, queries: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        q = self.self_norm(queries)
        queries = queries + self.self_attn(q, q, q, need_weights=False)[0]
        if self.cross_attn is not None:
            q = self.cross_norm(queries)
            queries = queries + self.cross_attn(q, media, media, need_weights=False)[0]
        return queries + self.ff(queries)


class QFormerResampler(Resampler):
    type_name = "qformer"
    keeps_token_grid = False

    def __init__(
        self,
        input_dim: int,
        latent_dimension: int,
        num_query_tokens: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        hidden_dim: int,
        intermediate_size: int,
        cross_attention_frequency: int,
        dropout: float,
    ) -> None:
        super().__init__(input_dim, latent_dimension)
        for key, value in (("num_query_tokens", num_query_tokens), ("num_hidden_layers", num_hidden_layers), ("num_attention_heads", num_attention_heads), ("hidden_dim", hidden_dim), ("intermediate_size", intermediate_size), ("cross_attention_frequency", cross_attention_frequency)):
            require(isinstance(value, int) and value >= 1, key, value, "an int >= 1")
        require(hidden_dim % num_attention_heads == 0, "num_attention_heads", num_attention_heads, f"a divisor of hidden_dim={hidden_dim}")
        require(0.0 <= float(dropout) < 1.0, "dropout", dropout, "a float in [0, 1)")
        self.hidden_dim = hidden_dim
        self.num_query_tokens = num_query_tokens
        self.query_tokens = nn.Parameter(torch.randn(num_query_tokens, hidden_dim) * 0.02)
        self.media_norm = nn.LayerNorm(input_dim)
        self.media_proj = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList(
            QFormerLayer(hidden_dim, num_attention_heads, intermediate_size, i % cross_attention_frequency == 0, float(dropout))
            for i in range(num_hidden_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, latent_dimension)

    def output_tokens(self, input_tokens: int) -> int:
        return self.num_query_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        media = self.media_proj(self.media_norm(tokens))
        queries = self.query_tokens.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            queries = layer(queries, media)
        return self.output_proj(self.norm(queries))
