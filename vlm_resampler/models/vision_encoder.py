"""Vision towers behind one interface: any supported family (SigLIP, SigLIP2, CLIP, DINOv2) loaded
through `from_pretrained`, its transformer blocks exposed for partial training, its normalisation
and native image size read from its own config."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    MODEL_MAPPING,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import cached_file

# ---------------------------------------------------------------------------------------------
# Vision towers.
# ---------------------------------------------------------------------------------------------

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VisionFamily:
    """What differs between the vision towers we support, keyed by the tower config's model_type."""

    name: str
    default_mean: tuple[float, float, float]
    default_std: tuple[float, float, float]
    takes_interpolate_flag: bool  # SigLIP/CLIP need `interpolate_pos_encoding=True` off their native size
    takes_flat_patches: bool  # SigLIP2 NaFlex: patches + pixel_attention_mask + spatial_shapes
    prefix_tokens: Callable[[PretrainedConfig], int]  # CLS / register tokens before the patches


VISION_FAMILIES: dict[str, VisionFamily] = {
    "siglip_vision_model": VisionFamily("siglip", SIGLIP_MEAN, SIGLIP_STD, True, False, lambda config: 0),
    "siglip2_vision_model": VisionFamily("siglip2", SIGLIP_MEAN, SIGLIP_STD, False, True, lambda config: 0),
    "clip_vision_model": VisionFamily("clip", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, True, False, lambda config: 1),
    # DINOv2 always interpolates its position embeddings, so it takes no flag.
    "dinov2": VisionFamily("dinov2", IMAGENET_MEAN, IMAGENET_STD, False, False, lambda config: 1),
    "dinov2_with_registers": VisionFamily(
        "dinov2", IMAGENET_MEAN, IMAGENET_STD, False, False, lambda config: 1 + config.num_register_tokens
    ),
}


def vision_family(config: PretrainedConfig) -> VisionFamily:
    family = VISION_FAMILIES.get(config.model_type)
    if family is None:
        raise ValueError(
            f"Vision tower of model_type {config.model_type!r} is not supported; expected one of "
            f"{sorted(VISION_FAMILIES)} (SigLIP, SigLIP2, CLIP, DINOv2)."
        )
    return family


def patchify_like_siglip2(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, (H/p)*(W/p), p*p*C], patches row-major, each flattened as (row, col, channel).

    Same layout as `convert_image_to_patches` in transformers' Siglip2 image processors, which is
    what the patch embedding of a real SigLIP2 checkpoint was trained on.
    """
    n, c, h, w = pixel_values.shape
    rows, cols = h // patch_size, w // patch_size
    patches = pixel_values.reshape(n, c, rows, patch_size, cols, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(n, rows * cols, patch_size * patch_size * c)


def _transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers (SigLIP/SigLIP2/CLIP: encoder.layers, DINOv2: encoder.layer)."""
    encoder = getattr(model, "encoder", None)
    for attribute in ("layers", "layer"):
        blocks = getattr(encoder, attribute, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ValueError(
        f"Found no transformer layer list at `encoder.layers` or `encoder.layer` in {type(model).__name__}; "
        "this vision tower layout is not supported."
    )


def _native_image_size(config: PretrainedConfig, family: VisionFamily) -> int:
    if family.takes_flat_patches:
        # SigLIP2 has no image size, only a square grid of num_patches position embeddings.
        return round(config.num_patches**0.5) * config.patch_size
    return config.image_size


class VisionEncoder(nn.Module):
    """Any supported transformers vision tower as `pixel_values [N,3,H,W] -> patch tokens [N, S, D]`.

    `pixel_values` must already be normalised with `image_mean`/`image_std`. CLS and register tokens
    are dropped, so S = (H/p) * (W/p) always. The HF model is the submodule `model`; transformers 5
    flattened the tower classes, so its keys read `model.encoder.layers.N...` / `model.embeddings...`
    (transformers maps the checkpoints' `vision_model.*` names on load and save).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.model = model
        self.family = vision_family(model.config)
        self.hidden_size: int = model.config.hidden_size
        self.patch_size: int = model.config.patch_size
        self.image_size: int = _native_image_size(model.config, self.family)
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        _transformer_blocks(model)  # fail at construction, not when a training stage first asks

    @property
    def blocks(self) -> nn.ModuleList:
        """The tower's transformer layers, e.g. to unfreeze the last N.

        A property rather than an attribute: assigning the ModuleList would register it a second
        time and duplicate every layer's weights in the state dict under `blocks.*`.
        """
        return _transformer_blocks(self.model)

    def grid_hw(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self._check_input(pixel_values)
        height, width = pixel_values.shape[-2:]
        rows, cols = self.grid_hw(height, width)
        if self.family.takes_flat_patches:
            hidden = self._forward_flat_patches(pixel_values, rows, cols)
        elif self.family.takes_interpolate_flag:
            off_native_size = (height, width) != (self.image_size, self.image_size)
            hidden = self.model(pixel_values=pixel_values, interpolate_pos_encoding=off_native_size).last_hidden_state
        else:
            hidden = self.model(pixel_values=pixel_values).last_hidden_state
        return self._patch_tokens(hidden, rows * cols)

    def _forward_flat_patches(self, pixel_values: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        batch = pixel_values.shape[0]
        patches = patchify_like_siglip2(pixel_values, self.patch_size)
        # Every view has the same size, so no patch is padding.
        attention_mask = torch.ones(batch, rows * cols, dtype=torch.long, device=pixel_values.device)
        spatial_shapes = torch.tensor([[rows, cols]] * batch, dtype=torch.long, device=pixel_values.device)
        return self.model(
            pixel_values=patches, pixel_attention_mask=attention_mask, spatial_shapes=spatial_shapes
        ).last_hidden_state

    def _patch_tokens(self, hidden: torch.Tensor, num_patches: int) -> torch.Tensor:
        prefix = hidden.shape[1] - num_patches
        expected_prefix = self.family.prefix_tokens(self.model.config)
        if prefix != expected_prefix:
            raise RuntimeError(
                f"{type(self.model).__name__} returned {hidden.shape[1]} tokens for {num_patches} patches; "
                f"expected {expected_prefix} CLS/register tokens in front, found {prefix}."
            )
        return hidden[:, prefix:]

    def _check_input(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"Expected pixel_values of shape [N, 3, H, W], got {tuple(pixel_values.shape)}.")
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize or crop the views to a multiple of it."
            )


def vision_tower_class(vision_config: PretrainedConfig) -> type[PreTrainedModel]:
    model_class = MODEL_MAPPING.get(type(vision_config), None)
    if model_class is None:
        raise ValueError(f"transformers has no model class for vision config {type(vision_config).__name__}.")
    return model_class


def normalisation(
    path: str, revision: str | None, family: VisionFamily
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """image_mean/std from the checkpoint's preprocessor_config.json, else the family's published values."""
    config_file = cached_file(
        path,
        "preprocessor_config.json",
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if config_file is None:
        return family.default_mean, family.default_std
    values = json.loads(Path(config_file).read_text())
    mean = values.get("image_mean", family.default_mean)
    std = values.get("image_std", family.default_std)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
