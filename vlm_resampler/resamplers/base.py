"""What every resampler promises to the rest of the model."""

from __future__ import annotations

from typing import Annotated

from torch import nn

from vlm_resampler.ranges import AT_LEAST_ONE, OutOfRange, checks_ranges


def require(condition: bool, key: str, value, expected: str) -> None:
    """Raise OutOfRange naming the config key, the value found and what was expected. For what
    relates several values; a single value's range is declared on its parameter (ranges.py)."""
    if not condition:
        raise OutOfRange(f"resampler.{key}", value, expected)


class Resampler(nn.Module):
    """Base class: `forward(tokens [N, S, input_dim]) -> [N, output_tokens(S), latent_dimension]`.

    `keeps_token_grid` says whether output token i still sits where input token i was in the
    view's patch grid. Such tokens are compared where two views see the same direction (overlap
    loss, `stitch=dedupe_overlap`); a query resampler's tokens have no direction, so its overlap
    loss resamples the shared region of the two views instead (`training.losses.overlap_pairs`).
    """

    type_name: str = ""
    keeps_token_grid: bool = True

    @checks_ranges("resampler")
    def __init__(self, input_dim: Annotated[int, AT_LEAST_ONE], latent_dimension: Annotated[int, AT_LEAST_ONE]) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.latent_dimension = latent_dimension

    def output_tokens(self, input_tokens: int) -> int:
        return input_tokens
