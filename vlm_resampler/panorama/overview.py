"""A picture of what the model sees: the panorama with each view's footprint, and the views
themselves with the parts they share with a neighbour shaded (used by launch/show_views.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from vlm_resampler.panorama.base import ViewMeta, ViewStrategy, pixel_directions, view_pixels
from vlm_resampler.panorama.geometry import directions_to_lonlat

PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#fffac8",
    "#800000",
    "#aaffc3",
    "#808000",
    "#ffd8b1",
    "#000075",
)
MARGIN = 12
LABEL_H = 16
MIN_TILE = 96  # below this a view is too small to read: the views wrap onto more rows
BORDER_POINTS = 96  # per edge of a view, enough for a smooth curve on the ERP


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class Layout:
    """Pixel layout of the picture: the ERP panel on top, then the views in rows of ``columns``."""

    width: int
    erp_w: int
    erp_h: int
    tile: int
    columns: int
    rows: int

    @property
    def height(self) -> int:
        return MARGIN + LABEL_H + self.erp_h + MARGIN + self.rows * (self.tile + LABEL_H + MARGIN)

    def tile_origin(self, position: int) -> tuple[int, int]:
        row, col = divmod(position, self.columns)
        y0 = MARGIN + LABEL_H + self.erp_h + MARGIN + row * (self.tile + LABEL_H + MARGIN)
        return MARGIN + col * (self.tile + MARGIN), y0


def layout(num_views: int, width: int = 1200) -> Layout:
    """Where everything goes in a picture ``width`` pixels wide (the height follows)."""
    if width < 2 * MARGIN + MIN_TILE:
        raise ValueError(f"width={width}: expected at least {2 * MARGIN + MIN_TILE} pixels")
    erp_w = width - 2 * MARGIN
    columns = max(1, min(num_views, (erp_w + MARGIN) // (MIN_TILE + MARGIN)))
    tile = min(256, (erp_w + MARGIN) // columns - MARGIN)
    return Layout(width, erp_w, erp_w // 2, tile, columns, math.ceil(num_views / columns))


def border_pixels(meta: ViewMeta, per_edge: int = BORDER_POINTS) -> Tensor:
    """Closed loop [4 * per_edge, 2] of pixel coordinates around a view's outer pixel edges."""
    h, w = meta.size
    t = torch.linspace(0.0, 1.0, per_edge + 1, dtype=torch.float64)[:-1]
    left, right, top, bottom = -0.5, w - 0.5, -0.5, h - 0.5
    edges = [
        torch.stack([left + t * (right - left), torch.full_like(t, top)], -1),
        torch.stack([torch.full_like(t, right), top + t * (bottom - top)], -1),
        torch.stack([right - t * (right - left), torch.full_like(t, bottom)], -1),
        torch.stack([torch.full_like(t, left), bottom - t * (bottom - top)], -1),
    ]
    return torch.cat(edges)


def footprint_polylines(meta: ViewMeta, erp_w: int, erp_h: int) -> list[list[tuple[float, float]]]:
    """A view's border on an ERP picture of ``erp_w`` x ``erp_h`` pixels, as polylines.

    Where the border crosses the +-180 degree seam the line is cut: it leaves at one edge of the
    picture and comes back at the other, at the latitude where it crossed.
    """
    if meta.projection == "equirect" and meta.fov_deg >= 360.0:
        # The whole sphere: its border is the picture's frame (lon +-180 would otherwise fold onto one line).
        top = (0.5 - (meta.pitch_deg + meta.vfov_deg / 2) / 180.0) * erp_h
        bottom = (0.5 - (meta.pitch_deg - meta.vfov_deg / 2) / 180.0) * erp_h
        x0, x1, y0, y1 = 1.0, erp_w - 2.0, max(1.0, top), min(erp_h - 2.0, bottom)
        return [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
    lonlat = directions_to_lonlat(pixel_directions(meta, border_pixels(meta)))
    # Rounded so that a border at constant longitude does not zigzag over float noise.
    xs = ((lonlat[:, 0] / (2 * math.pi) + 0.5) * erp_w).round(decimals=3).tolist()
    ys = ((0.5 - lonlat[:, 1] / math.pi) * erp_h).round(decimals=3).tolist()
    points = list(zip(xs, ys)) + [(xs[0], ys[0])]
    lines, current = [], [points[0]]
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        if abs(xb - xa) > erp_w / 2:  # wrapped around: cut at the seam
            xb_unwrapped = xb - erp_w if xb > xa else xb + erp_w
            edge = erp_w if xb_unwrapped > xa else 0.0
            y_cross = ya + (yb - ya) * (edge - xa) / (xb_unwrapped - xa)
            current.append((edge, y_cross))
            lines.append(current)
            current = [(erp_w - edge, y_cross)]
        current.append((xb, yb))
    lines.append(current)
    return [line for line in lines if len(line) >= 2]


def footprint_centre(meta: ViewMeta, erp_w: int, erp_h: int) -> tuple[float, float]:
    h, w = meta.size
    centre = torch.tensor([[(w - 1) / 2.0, (h - 1) / 2.0]], dtype=torch.float64)
    lon, lat = directions_to_lonlat(pixel_directions(meta, centre))[0].tolist()
    return (lon / (2 * math.pi) + 0.5) * erp_w, (0.5 - lat / math.pi) * erp_h


def shared_masks(strategy: ViewStrategy, tile: int) -> dict[int, list[tuple[int, np.ndarray]]]:
    """For each view: (neighbour, mask [tile, tile]) of the pixels that the neighbour also sees."""
    metas = strategy.metadata()
    directions: dict[int, Tensor] = {}

    def tile_directions(meta: ViewMeta) -> Tensor:
        if meta.index not in directions:
            h, w = meta.size
            # Centres of a tile x tile raster over the view, in the view's own pixel coordinates.
            ys = (torch.arange(tile, dtype=torch.float64) + 0.5) * (h / tile) - 0.5
            xs = (torch.arange(tile, dtype=torch.float64) + 0.5) * (w / tile) - 0.5
            directions[meta.index] = pixel_directions(meta, torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1))
        return directions[meta.index]

    out: dict[int, list[tuple[int, np.ndarray]]] = {m.index: [] for m in metas}
    for v, u in strategy.neighbour_pairs():
        for a, b in ((v, u), (u, v)):
            _, inside = view_pixels(metas[b], tile_directions(metas[a]))
            if bool(inside.any()):
                out[a].append((b, inside.numpy()))
    return out


def _to_image(chw: Tensor) -> Image.Image:
    array = (chw.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


def _shade(image: Image.Image, mask: np.ndarray, rgb: str, alpha: float = 0.4) -> Image.Image:
    overlay = Image.new("RGB", image.size, rgb)
    weights = Image.fromarray((mask * alpha * 255).astype(np.uint8), mode="L")
    return Image.composite(overlay, image, weights)


def render_overview(erp: Tensor, strategy: ViewStrategy, width: int = 1200, title: str = "") -> Image.Image:
    """The picture for one ERP [3, H, W] in [0, 1] and a view strategy."""
    if erp.ndim != 3 or erp.shape[0] != 3:
        raise ValueError(f"erp must be [3, H, W], got shape {tuple(erp.shape)}")
    metas = strategy.metadata()
    lay = layout(len(metas), width)
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (lay.width, lay.height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN // 2), title or repr(strategy), fill="black", font=font)

    # Panorama with each view's footprint.
    panel = _to_image(erp).resize((lay.erp_w, lay.erp_h), Image.BILINEAR)
    panel_draw = ImageDraw.Draw(panel)
    for meta in metas:
        for line in footprint_polylines(meta, lay.erp_w, lay.erp_h):
            panel_draw.line(line, fill=colour(meta.index), width=3 if meta.is_global else 2)
        cx, cy = footprint_centre(meta, lay.erp_w, lay.erp_h)
        cx, cy = min(max(cx, 8.0), lay.erp_w - 8.0), min(max(cy, 8.0), lay.erp_h - 8.0)  # poles sit on the edge
        panel_draw.text(
            (cx, cy),
            str(meta.index),
            fill=colour(meta.index),
            font=font,
            anchor="mm",
            stroke_width=2,
            stroke_fill="black",
        )
    canvas.paste(panel, (MARGIN, MARGIN + LABEL_H))

    # The views, each shaded where a neighbour sees the same directions (in that neighbour's colour).
    views = strategy.views(erp.unsqueeze(0))[0]
    masks = shared_masks(strategy, lay.tile)
    for position, meta in enumerate(metas):
        tile = _to_image(views[meta.index]).resize((lay.tile, lay.tile), Image.BILINEAR)
        for neighbour, mask in masks[meta.index]:
            tile = _shade(tile, mask, colour(neighbour))
        x0, y0 = lay.tile_origin(position)
        canvas.paste(tile, (x0, y0))
        draw.rectangle([x0 - 2, y0 - 2, x0 + lay.tile + 1, y0 + lay.tile + 1], outline=colour(meta.index), width=2)
        label = f"{meta.index}: {meta.label}" if meta.label else str(meta.index)
        draw.text((x0, y0 + lay.tile + 3), label, fill="black", font=font)
    return canvas
