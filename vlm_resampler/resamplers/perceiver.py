"""Perceiver resampler: learned latents cross-attend to a view's tokens (Flamingo-style: the keys
are the tokens and the latents together), each layer followed by a feed-forward block."""

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
    rule,
    shared_value,
    target_of,
    tensor_shape,
)


class PerceiverLayer(nn.Module):
    def __init__(self, width: int, heads: int, dim_head: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(width)
        self.norm_latents = nn.LayerNorm(width)
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, ff_mult * width, bias=False),
            nn.GELU(),
            nn.Linear(ff_mult * width, width, bias=False),
        )
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.dim_head).transpose(1, 2)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        m, lat = self.norm_media(media), self.norm_latents(latents)
        q = self._split(self.to_q(lat))
        k, v = self.to_kv(torch.cat([m, lat], dim=1)).chunk(2, dim=-1)
        attended = nn.functional.scaled_dot_product_attention(
            q, self._split(k), self._split(v), dropout_p=self.dropout if self.training else 0.0
        )
        latents = latents + self.to_out(attended.transpose(1, 2).flatten(2))
        return latents + self.ff(latents)


class PerceiverResampler(Resampler):
    type_name = "perceiver"
    keeps_token_grid = False

    @checks_ranges("resampler")
    def __init__(
        self,
        input_dim: int,
        latent_dimension: int,
        num_latents: Annotated[int, AT_LEAST_ONE],
        depth: Annotated[int, AT_LEAST_ONE],
        heads: Annotated[int, AT_LEAST_ONE],
        hidden_dim: Annotated[int, AT_LEAST_ONE],
        dim_head: Annotated[int, AT_LEAST_ONE],
        ff_mult: Annotated[int, AT_LEAST_ONE],
        dropout: Annotated[float, DROPOUT_RATE],
    ) -> None:
        super().__init__(input_dim, latent_dimension)
        self.hidden_dim = hidden_dim
        self.num_latents = num_latents
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_dim) * 0.02)
        self.layers = nn.ModuleList(
            PerceiverLayer(hidden_dim, heads, dim_head, ff_mult, float(dropout)) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, latent_dimension)

    def output_tokens(self, input_tokens: int) -> int:
        return self.num_latents

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        media = self.input_proj(tokens)
        latents = self.latents.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(media, latents)
        return self.output_proj(self.norm(latents))


# ---- the shape rule: the hyperparameters these weights fix (resamplers/shape_rules.py) ----


@rule("perceiver", lambda s: "latents" in s and any(k.startswith("layers.") and ".to_q." in k for k in s))
def infer_perceiver(shapes: Shapes) -> InferredResampler:

    num_latents, hidden = tensor_shape(shapes, "latents", 2)
    layers = block_indices(shapes, "layers")
    inner = shared_value(
        "heads * dim_head",
        {f"layers.{i}.to_q.weight[0]": tensor_shape(shapes, f"layers.{i}.to_q.weight", 2)[0] for i in layers},
    )
    ff_width = shared_value(
        "feed-forward width",
        {f"layers.{i}.ff.1.weight[0]": tensor_shape(shapes, f"layers.{i}.ff.1.weight", 2)[0] for i in layers},
    )
    if ff_width % hidden:
        raise ShapeInferenceError(
            f"layers.0.ff.1.weight: width {ff_width} is not a multiple of hidden_dim {hidden} (ff_mult must be an int)"
        )
    hparams = {
        "input_dim": tensor_shape(shapes, "input_proj.weight", 2)[1],
        "latent_dimension": tensor_shape(shapes, "output_proj.weight", 2)[0],
        "num_latents": num_latents,
        "depth": len(layers),
        "hidden_dim": hidden,
        "ff_mult": ff_width // hidden,
    }
    unknown = [DROPOUT]
    if inner == 1:
        hparams |= {"heads": 1, "dim_head": 1}
    else:
        why = (
            f"to_q.weight has heads * dim_head = {inner} rows; every split of {inner} has these shapes "
            "but attends differently (either one of heads and dim_head gives the other)"
        )
        unknown += [Unknown("heads", True, why), Unknown("dim_head", True, why)]
    return InferredResampler(
        "perceiver",
        target_of(PerceiverResampler),
        hparams,
        tuple(unknown),
        {"heads * dim_head": inner},
        finish=_split_heads(inner),
    )


def _split_heads(inner: int):
    """heads and dim_head: either one gives the other (their product is fixed by to_q)."""

    def finish(values: dict, origin: dict) -> None:
        if "heads" in values and "dim_head" not in values:
            _check_divisor("heads", values["heads"], inner)
            values["dim_head"], origin["dim_head"] = (
                inner // values["heads"],
                f"heads * dim_head = {inner} (to_q.weight) / heads",
            )
        elif "dim_head" in values and "heads" not in values:
            _check_divisor("dim_head", values["dim_head"], inner)
            values["heads"], origin["heads"] = (
                inner // values["dim_head"],
                f"heads * dim_head = {inner} (to_q.weight) / dim_head",
            )
        elif "heads" in values:
            require(
                values["heads"] * values["dim_head"] == inner,
                "heads",
                values["heads"],
                f"heads * dim_head = {inner} (to_q.weight rows); dim_head={values['dim_head']}",
            )

    return finish


def _check_divisor(key: str, value, inner: int) -> None:
    require(
        isinstance(value, int) and value >= 1 and inner % value == 0,
        key,
        value,
        f"a divisor of heads * dim_head = {inner} (the rows of to_q.weight)",
    )
