"""The panoramic VLM: ERP panorama -> views -> vision encoder -> resampler -> projector -> LLM.

Everything is passed in already built (Hydra instantiates the backbones and view strategy) or as
a partial that still needs a width only known once the backbones exist: the resampler's input
width is the vision encoder's, never a number typed in a config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vlm_resampler.data.prompts import IMAGE_SLOT
from vlm_resampler.models.lora import attach_lora
from vlm_resampler.ranges import OutOfRange


class PanoramaVLM(nn.Module):
    def __init__(
        self,
        vision_encoder: nn.Module,
        language_model: nn.Module,
        views,
        resampler: Callable[..., nn.Module],
        projector: Callable[..., nn.Module],
        overlap_head: Callable[..., nn.Module],
        stitch: Callable[..., nn.Module],
        lora: dict | None = None,
    ) -> None:
        super().__init__()
        self.vision = vision_encoder
        self.views = views
        check_views_fit_patches(views, vision_encoder.patch_size)
        self.resampler = resampler(input_dim=vision_encoder.hidden_size)
        llm_width = language_model.get_input_embeddings().embedding_dim
        self.projector = build_part(
            "projector", projector, input_dim=self.resampler.latent_dimension, output_dim=llm_width
        )
        self.overlap_head = build_part("model.overlap_head", overlap_head, input_dim=self.resampler.latent_dimension)
        self.stitch = stitch(
            latent_dimension=self.resampler.latent_dimension,
            llm_width=llm_width,
            views=views,
            keeps_token_grid=self.resampler.keeps_token_grid,
            grid_hw=self.view_grid,
            tokens_per_view=self.tokens_per_view,
        )
        self.llm = attach_lora(language_model, lora) if lora else language_model
        self.lora_config = dict(lora) if lora else None
        mean = torch.tensor(vision_encoder.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(vision_encoder.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        # Not persistent: they come from the vision encoder's own preprocessing config.
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the model computes (its inputs go there): one device for the whole model."""
        return self.image_mean.device

    # ---- shapes -------------------------------------------------------------------------
    @property
    def view_grid(self) -> tuple[int, int]:
        h, w = self.views.metadata()[0].size
        return self.vision.grid_hw(h, w)

    @property
    def num_views(self) -> int:
        return len(self.views.metadata())

    @property
    def tokens_per_view(self) -> int:
        gh, gw = self.view_grid
        return self.resampler.output_tokens(gh * gw)

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens one panorama occupies in the LLM sequence (after stitching)."""
        return self.stitch.tokens_per_image

    # ---- vision side --------------------------------------------------------------------
    def view_features(self, panoramas: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> the vision encoder's patch tokens of each view [B, V, S, D]
        (S = the view grid's tokens, row-major)."""
        views = self.views.views(panoramas)  # [B, V, 3, h, w]
        b, v = views.shape[:2]
        pixels = (views.flatten(0, 1) - self.image_mean) / self.image_std
        features = self.vision(pixels)  # [B*V, S, D]
        return features.view(b, v, features.shape[1], features.shape[2])

    def encode_views(self, panoramas: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> resampled view tokens [B, V, S', latent]."""
        return self.encode_features(self.view_features(panoramas))

    def encode_features(self, features: torch.Tensor) -> torch.Tensor:
        """The vision encoder's tokens [B, V, S, D] -> resampled view tokens [B, V, S', latent]."""
        b, v = features.shape[:2]
        tokens = self.resampler(features.flatten(0, 1))
        return tokens.view(b, v, tokens.shape[1], tokens.shape[2])

    def visual_embeddings(
        self, panoramas: torch.Tensor | None = None, view_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, 3, H, W] -> [B, tokens_per_image, llm_width]: views in order, tokens row-major
        within a view, stitched as configured (view position, overlap dedupe, separators).
        `view_features` (the frozen vision encoder's view_features, cached) replaces `panoramas`."""
        if (panoramas is None) == (view_features is None):
            raise ValueError("visual_embeddings takes panoramas or view_features, exactly one of them")
        features = self.view_features(panoramas) if view_features is None else view_features
        tokens = self.stitch.merge(self.encode_features(features))
        return self.stitch.separate(self.projector(tokens))

    # ---- language side ------------------------------------------------------------------
    def splice(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        visual: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return splice_visual(self.llm.get_input_embeddings(), input_ids, attention_mask, visual, labels)

    def answer_logits(
        self, visual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, vocab] at exactly the N positions that predict an answer token, and those
        tokens [N]. `visual`: visual_embeddings of the batch's panoramas."""
        hidden, targets = answer_hidden_states(self.llm, self.splice(input_ids, attention_mask, visual, labels))
        return self.llm.get_output_embeddings()(hidden), targets


def check_views_fit_patches(views, patch_size: int) -> None:
    """The tower cuts each view into patch_size squares: a view it cannot cut evenly is refused here,
    where the model is built (on the meta device before a sweep), not at the first forward."""
    h, w = views.metadata()[0].size  # one size for all views (they are batched)
    if h % patch_size or w % patch_size:
        raise OutOfRange(
            "view.size",
            h if h == w else (h, w),
            f"a multiple of the vision encoder's patch size {patch_size} (view.size=${{backbone.image_size}} "
            "follows the backbone)",
        )


def build_part(key: str, factory: Callable[..., nn.Module], **wiring) -> nn.Module:
    """factory(**wiring); a setting outside its declared range is named by the part's config key."""
    try:
        return factory(**wiring)
    except OutOfRange as err:
        raise err.under(key) from None


def answer_hidden_states(llm: nn.Module, spliced: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The LLM's last hidden states [N, width] at the positions that predict an answer token (the
    token after it is labelled), and those tokens [N]. The vocabulary-sized output layer then runs
    on real answer positions only, not on batch x longest answer (padding included)."""
    hidden = llm.get_decoder()(
        inputs_embeds=spliced["inputs_embeds"],
        attention_mask=spliced["attention_mask"],
        position_ids=spliced["position_ids"],
        use_cache=False,
    ).last_hidden_state
    targets = spliced["labels"][:, 1:]
    keep = targets != -100
    return hidden[:, :-1][keep], targets[keep]


def splice_visual(
    embed: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    visual: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Replace the single IMAGE_SLOT of each (left padded) row by that row's visual tokens.

    Every row grows by the same number of tokens, so left padding is preserved and the text after
    the image (the answer) still ends at the last position."""
    slots = input_ids == IMAGE_SLOT
    per_row = slots.sum(dim=1)
    if not torch.all(per_row == 1):
        raise ValueError(f"each prompt must hold exactly one image slot, found {per_row.tolist()}")
    text = embed(input_ids.masked_fill(slots, 0))
    pos = slots.float().argmax(dim=1)
    n_vis = visual.shape[1]
    rows, masks, label_rows = [], [], []
    for i in range(input_ids.shape[0]):
        p = int(pos[i])
        rows.append(torch.cat([text[i, :p], visual[i].to(text.dtype), text[i, p + 1 :]]))
        ones = attention_mask.new_ones(n_vis)
        masks.append(torch.cat([attention_mask[i, :p], ones, attention_mask[i, p + 1 :]]))
        if labels is not None:
            ignore = labels.new_full((n_vis,), -100)
            label_rows.append(torch.cat([labels[i, :p], ignore, labels[i, p + 1 :]]))
    mask = torch.stack(masks)
    out = {
        "inputs_embeds": torch.stack(rows),
        "attention_mask": mask,
        # Count positions from the first real token, exactly as generation does.
        "position_ids": (mask.cumsum(dim=1) - 1).clamp(min=0),
    }
    if labels is not None:
        out["labels"] = torch.stack(label_rows)
    return out
