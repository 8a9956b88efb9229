"""What every resampler promises to the rest of the model."""

from __future__ import annotations

from torch import nn


def require(condition: bool, key: str, value, expected: str) -> None:
    """Raise a ValueError that names the config key, the value found and what was expected."""
    if not condition:
        raise ValueError(f"resampler.{key}={value!r}: expected {expected}")


class Resampler(nn.Module):
    """Base class: `forward(tokens [N, S, input_dim]) -> [N, output_tokens(S), latent_dimension]`.

    `keeps_token_grid` says whether output token i still sits where input token i was in the
    view's patch grid. Such tokens are compared where two views see the same direction (overlap
    loss, `stitch=dedupe_overlap`); a query resampler's tokens have no direction, so its overlap
    loss resamples the shared region of the two views instead (`training.losses.overlap_pairs`).
    """

    type_name: str = ""
    keeps_token_grid: bool = True

    def __init__(self, input_dim: int, latent_dimension: int) -> None:
        super().__init__()
        require(isinstance(input_dim, int) and input_dim > 0, "input_dim", input_dim, "a positive int")
        require(
            isinstance(latent_dimension, int) and latent_dimension > 0,
            "latent_dimension",
            latent_dimension,
            "a positive int",
        )
        self.input_dim = input_dim
        self.latent_dimension = latent_dimension

    def output_tokens(self, input_tokens: int) -> int:
        return input_tokens
