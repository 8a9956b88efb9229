"""Q-Former resampler (our own module; no BERT config or weights are downloaded): learned query
tokens, pre-norm layers of self-attention among the queries, cross-attention to the view's
tokens every `cross_attention_frequency` layers, and a feed-forward block."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from vlm_resampler.ranges import AT_LEAST_ONE, DROPOUT_RATE, checks_ranges
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


class QFormerLayer(nn.Module):
    def __init__(self, width: int, heads: int, intermediate: int, cross: bool, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(width) if cross else None
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True) if cross else None
        self.ff = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, intermediate), nn.GELU(), nn.Linear(intermediate, width)
        )

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

    @checks_ranges("resampler")
    def __init__(
        self,
        input_dim: int,
        latent_dimension: int,
        num_query_tokens: Annotated[int, AT_LEAST_ONE],
        num_hidden_layers: Annotated[int, AT_LEAST_ONE],
        num_attention_heads: Annotated[int, AT_LEAST_ONE],
        hidden_dim: Annotated[int, AT_LEAST_ONE],
        intermediate_size: Annotated[int, AT_LEAST_ONE],
        cross_attention_frequency: Annotated[int, AT_LEAST_ONE],
        dropout: Annotated[float, DROPOUT_RATE],
    ) -> None:
        super().__init__(input_dim, latent_dimension)
        require(
            hidden_dim % num_attention_heads == 0,
            "num_attention_heads",
            num_attention_heads,
            f"a divisor of hidden_dim={hidden_dim}",
        )
        self.hidden_dim = hidden_dim
        self.num_query_tokens = num_query_tokens
        self.query_tokens = nn.Parameter(torch.randn(num_query_tokens, hidden_dim) * 0.02)
        self.media_norm = nn.LayerNorm(input_dim)
        self.media_proj = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList(
            QFormerLayer(
                hidden_dim, num_attention_heads, intermediate_size, i % cross_attention_frequency == 0, float(dropout)
            )
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


# ---- the shape rule: the hyperparameters these weights fix (resamplers/shape_rules.py) ----


@rule("qformer", lambda s: "query_tokens" in s)
def infer_qformer(shapes: Shapes) -> InferredResampler:

    queries, hidden = tensor_shape(shapes, "query_tokens", 2)
    layers = block_indices(shapes, "layers")
    if not layers:
        raise ShapeInferenceError(f"qformer: no layers.0.* tensors; found {preview(shapes)}")
    cross = [i for i in layers if f"layers.{i}.cross_attn.in_proj_weight" in shapes]
    frequency, note = cross_frequency(cross, len(layers))
    intermediate = shared_value(
        "intermediate_size",
        {f"layers.{i}.ff.1.weight[0]": tensor_shape(shapes, f"layers.{i}.ff.1.weight", 2)[0] for i in layers},
    )
    hparams = {
        "input_dim": tensor_shape(shapes, "media_proj.weight", 2)[1],
        "latent_dimension": tensor_shape(shapes, "output_proj.weight", 2)[0],
        "num_query_tokens": queries,
        "num_hidden_layers": len(layers),
        "hidden_dim": hidden,
        "intermediate_size": intermediate,
        "cross_attention_frequency": frequency,
    }
    unknown = [DROPOUT]
    if hidden == 1:
        hparams["num_attention_heads"] = 1
    else:
        unknown.append(
            Unknown(
                "num_attention_heads",
                True,
                f"attention weights are [3*{hidden}, {hidden}] for every head count dividing {hidden}, but the outputs differ",
            )
        )
    return InferredResampler(
        "qformer",
        target_of(QFormerResampler),
        hparams,
        tuple(unknown),
        {"cross_attention_layers": cross},
        (note,) if note else (),
        finish=_check_heads(hidden),
    )


def cross_frequency(cross: list[int], num_layers: int) -> tuple[int, str | None]:
    """The cross_attention_frequency f whose layers {i : i % f == 0} are exactly `cross`."""
    if cross == [0]:
        if num_layers == 1:
            return 1, None
        return num_layers, (
            f"cross_attention_frequency: only layer 0 has cross-attention, which every value "
            f">= {num_layers} gives; reported as {num_layers}"
        )
    frequency = cross[1] if len(cross) > 1 else 0
    if frequency == 0 or cross != list(range(0, num_layers, frequency)):
        raise ShapeInferenceError(
            f"qformer: cross-attention in layers {cross} of {num_layers}; QFormerResampler puts it in the layers "
            "i with i % cross_attention_frequency == 0, and no frequency gives these"
        )
    return frequency, None


def _check_heads(hidden: int):
    def finish(values: dict, origin: dict) -> None:
        heads = values.get("num_attention_heads")
        if heads is not None:
            require(
                isinstance(heads, int) and heads >= 1 and hidden % heads == 0,
                "num_attention_heads",
                heads,
                f"a divisor of hidden_dim={hidden} (query_tokens.shape[1])",
            )

    return finish
