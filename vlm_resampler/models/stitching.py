"""How the resampled tokens of several views become one token sequence for the LLM.

Two modes:
- `concat`: every token of every view, views in order.
- `dedupe_overlap`: each direction once. Where two neighbouring views see the same directions
  (the geometric token correspondence of the view strategy, the same pairs the vision stage's
  overlap loss uses), the two tokens are averaged into one and the second copy is dropped.
  Only for resamplers that keep the patch grid: a query token of a perceiver has no direction.

Optionally a view position encoding is added to the resampler outputs first: a learned linear
map of sin/cos harmonics of the view's yaw (so 359 and 1 degrees are neighbours) and of its
pitch. The resampler sees one view at a time and cannot tell which; without this the LLM can
only tell views apart by their place in the sequence. Optionally a learned separator embedding
(LLM width) follows every view but the last.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn

from vlm_resampler.ranges import AT_LEAST_ONE, BOOL, checks_ranges, one_of

MODES = ("concat", "dedupe_overlap")


def view_features(
    yaw_deg: torch.Tensor, pitch_deg: torch.Tensor, is_global: torch.Tensor, harmonics: int
) -> torch.Tensor:
    """[V] per view -> [V, 2 * harmonics + 3]: sin/cos of k*yaw (k = 1..harmonics), sin/cos of
    pitch, and 1 for a global view (which looks at yaw 0 like the first tile, but sees everything)."""
    yaw = yaw_deg * (math.pi / 180.0)
    k = torch.arange(1, harmonics + 1, dtype=yaw.dtype)
    angles = yaw[:, None] * k[None, :]
    pitch = pitch_deg * (math.pi / 180.0)
    flag = is_global.to(yaw.dtype)[:, None]
    return torch.cat([angles.sin(), angles.cos(), pitch.sin()[:, None], pitch.cos()[:, None], flag], dim=1)


class ViewStitcher(nn.Module):
    # The first six come from the built model (PanoramaVLM); the last four are conf/stitch's.
    @checks_ranges("stitch")
    def __init__(
        self,
        latent_dimension: int,
        llm_width: int,
        views,
        keeps_token_grid: bool,
        grid_hw: tuple[int, int],
        tokens_per_view: int,
        mode: Annotated[str, one_of(*MODES)],
        view_position: Annotated[bool, BOOL],
        yaw_harmonics: Annotated[int, AT_LEAST_ONE],
        separator: Annotated[bool, BOOL],
    ) -> None:
        super().__init__()
        self.mode = mode
        metas = views.metadata()
        self.num_views = len(metas)
        self.tokens_per_view = tokens_per_view
        self.yaw_harmonics = yaw_harmonics
        if view_position:
            yaw = torch.tensor([m.yaw_deg for m in metas], dtype=torch.float32)
            pitch = torch.tensor([m.pitch_deg for m in metas], dtype=torch.float32)
            is_global = torch.tensor([m.is_global for m in metas])
            # A buffer, not a parameter: it is geometry, rebuilt from the view config.
            features = view_features(yaw, pitch, is_global, yaw_harmonics)
            self.register_buffer("view_features", features, persistent=False)
            self.view_position = nn.Linear(features.shape[1], latent_dimension, bias=False)
        else:
            self.view_position = None
        self.separator = nn.Parameter(torch.randn(llm_width) * 0.02) if separator and self.num_views > 1 else None
        # Geometry bookkeeping, on the CPU even when the model is built on the meta device (as
        # launch/inspect.py does): its values decide the number of tokens.
        with torch.device("cpu"):
            keep = torch.ones(self.num_views, tokens_per_view, dtype=torch.bool)
            merge_into: list[tuple[int, int, int, int]] = []
            if mode == "dedupe_overlap":
                if not keeps_token_grid:
                    raise ValueError(
                        "stitch.mode=dedupe_overlap needs tokens that keep the patch grid (resampler=mlp or "
                        "bimamba); this resampler outputs query tokens, which have no direction: use stitch=concat"
                    )
                for v, w, idx_v, idx_w in views.token_correspondence(grid_hw):
                    for a, b in zip(idx_v.tolist(), idx_w.tolist()):
                        # A token already dropped (it was merged into an earlier view) stays dropped.
                        if keep[w, b] and keep[v, a]:
                            keep[w, b] = False
                            merge_into.append((v, a, w, b))
        self.register_buffer("keep", keep.flatten(), persistent=False)
        # Index tensors that move with the model. Built from lists at each forward they were
        # host-to-device copies on a GPU, and the boolean mask's selection a device-to-host sync.
        self.register_buffer("kept_index", self.keep.nonzero().squeeze(1), persistent=False)
        merges = torch.tensor(merge_into, dtype=torch.long, device="cpu").reshape(-1, 4).T  # rows v, a, w, b
        self.register_buffer("merge_index", merges.contiguous(), persistent=False)
        self.tokens_kept_per_view = keep.sum(dim=1).tolist()

    @property
    def tokens_per_image(self) -> int:
        return sum(self.tokens_kept_per_view) + (self.num_views - 1 if self.separator is not None else 0)

    def merge(self, tokens: torch.Tensor) -> torch.Tensor:
        """Resampler outputs [B, V, S, L] -> [B, N, L] (latent width), views in order."""
        if self.view_position is not None:
            tokens = tokens + self.view_position(self.view_features.to(tokens.dtype))[None, :, None, :]
        deduped = self.merge_index.shape[1] > 0  # read off the shape: no device sync
        if deduped:
            v, a, w, b = self.merge_index
            tokens = tokens.clone()
            tokens[:, v, a] = 0.5 * (tokens[:, v, a] + tokens[:, w, b])
        flat = tokens.flatten(1, 2)
        return flat.index_select(1, self.kept_index) if deduped else flat

    def separate(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Projected tokens [B, N, W] -> [B, N + V - 1, W] with a separator after each view but the last."""
        if self.separator is None:
            return embeddings
        pieces = []
        for i, chunk in enumerate(embeddings.split(self.tokens_kept_per_view, dim=1)):
            pieces.append(chunk)
            if i < self.num_views - 1:
                pieces.append(self.separator.to(embeddings.dtype).expand(embeddings.shape[0], 1, -1))
        return torch.cat(pieces, dim=1)
