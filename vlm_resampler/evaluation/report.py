"""report.html: one self-contained page per eval (no external resources), to read the
predictions next to the panoramas and views the model saw, sortable by per-example score.

Sorting is driven by the URL hash (`report.html#sort=cider`, `#sort=cider-asc`, `#sort=index`)
so a link can open the page already sorted, and a headless browser can test it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field

from vlm_resampler.evaluation.intervals import cider_interval_line, interval_text
from vlm_resampler.evaluation.metrics import METRIC_NAMES

# Per-example scores a card shows and the page can sort by (when computed).
CARD_METRICS = ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L", "SPICE")


@dataclass
class Card:
    index: int
    image: str
    query: str
    prediction: str
    references: list[str]
    scores: dict[str, float]
    panorama: str = ""  # data: URI of a JPEG thumbnail
    views: list[tuple[str, str]] = field(default_factory=list)  # (label, data: URI)


def sort_key(metric: str) -> str:
    return metric.lower().replace("-", "")


def jpeg_data_uri(image, quality: int) -> str:
    """A PIL image as an inline JPEG."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_pil(pixels):
    """[3, h, w] float tensor in [0, 1] -> PIL image."""
    from PIL import Image

    array = pixels.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def example_images(
    view_strategy, panorama, panorama_width: int, view_size: int, quality: int
) -> tuple[str, list[tuple[str, str]]]:
    """Thumbnails of the panorama as the model received it and of the views its own view
    strategy cuts from it (so the page shows what the vision encoder saw)."""
    pano = to_pil(panorama)
    pano.thumbnail((panorama_width, panorama_width))
    views = view_strategy.views(panorama)  # [V, 3, h, w]
    out = []
    for meta, view in zip(view_strategy.metadata(), views):
        thumb = to_pil(view)
        thumb.thumbnail((view_size, view_size))
        label = f"view {meta.index}: yaw {meta.yaw_deg:g}°, pitch {meta.pitch_deg:g}°, fov {meta.fov_deg:g}°"
        out.append((label, jpeg_data_uri(thumb, quality)))
    return jpeg_data_uri(pano, quality), out


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def metrics_table(results: dict) -> str:
    rows = [("model", results["model"])] + list(results.get("baselines", {}).items())
    names = [n for n in (*METRIC_NAMES, "SPICE") if any(n in scores for _, scores in rows)]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{_fmt(scores.get(n))}</td>" for n in names) + "</tr>"
        for label, scores in rows
    )
    notes = "".join(
        f"<li>{html.escape(n)} not computed: {html.escape(r)}</li>" for n, r in results.get("unavailable", {}).items()
    )
    constant = results.get("baselines", {}).get("constant_caption", {}).get("caption")
    if constant:
        notes += f"<li>constant_caption always answers “{html.escape(constant)}”</li>"
    return f'<table id="metrics"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>' + (
        f"<ul class=notes>{notes}</ul>" if notes else ""
    )


def facts(results: dict) -> str:
    lines = []
    gen = results.get("generation")
    if gen:
        lines.append(
            f"generation: {gen['decoding']}, batch {gen['batch_size']}, {gen['items_per_s']:.2f} items/s, "
            f"{gen['tokens_per_s']:.1f} generated tokens/s"
        )
    intervals = results.get("intervals")
    if intervals:
        lines.append(cider_interval_line(results))
    dep = results.get("image_dependence")
    if dep:
        lines.append(
            f"image dependence: answer loss {dep['answer_loss']:.4f} with its own panorama, "
            f"{dep['answer_loss_images_rotated']:.4f} with another's "
            f"(gap {dep['gap']:+.4f}{interval_text(intervals, 'image_gap', 4)})"
        )
    lines += results.get("ignored_settings", [])
    return "".join(f"<li>{html.escape(line)}</li>" for line in lines)


def card_html(card: Card) -> str:
    attrs = " ".join(f'data-{sort_key(m)}="{card.scores[m]!r}"' for m in CARD_METRICS if m in card.scores)
    scores = " · ".join(f"{html.escape(m)} {_fmt(card.scores[m])}" for m in CARD_METRICS if m in card.scores)
    views = "".join(
        f'<img class="view" src="{uri}" alt="{html.escape(label)}" title="{html.escape(label)}">'
        for label, uri in card.views
    )
    refs = "".join(f"<li>{html.escape(r)}</li>" for r in card.references)
    pano = f'<img class="pano" src="{card.panorama}" alt="panorama {html.escape(card.image)}">' if card.panorama else ""
    return (
        f'<article class="card" data-index="{card.index}" {attrs}>'
        f"<header>#{card.index} <span class=image>{html.escape(card.image)}</span><span class=scores>{scores}</span></header>"
        f"{pano}<div class=views>{views}</div>"
        f"<p class=query><b>query</b> {html.escape(card.query)}</p>"
        f"<p class=prediction><b>prediction</b> {html.escape(card.prediction) or '<i>(empty)</i>'}</p>"
        f"<details open><summary>{len(card.references)} references</summary><ul class=refs>{refs}</ul></details>"
        "</article>"
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:right}
thead th{border-bottom:2px solid #999}tbody th{text-align:left}
nav a{margin-right:.8em}nav a.active{font-weight:bold}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1em;margin-top:1em}
.card{border:1px solid #ccc;border-radius:6px;padding:.6em;min-width:0;overflow-wrap:anywhere}.card header{display:flex;gap:.6em;color:#555}
.scores{margin-left:auto;font-variant-numeric:tabular-nums}
.pano{width:100%;display:block}.views{display:flex;flex-wrap:wrap;gap:2px;margin:.3em 0}
.prediction{background:#f3f6ff;padding:.3em}
"""

# Reorders the cards in place; the hash names the key, "-asc" for low first, "index" for file order.
SCRIPT = """
function sortCards(spec){
  var asc=/-asc$/.test(spec), key=spec.replace(/-asc$/,'');
  var box=document.getElementById('cards'), cards=Array.prototype.slice.call(box.children);
  function value(c){var v=parseFloat(c.dataset[key]);return isNaN(v)?-Infinity:v;}
  cards.sort(function(a,b){
    var d=key==='index'?value(a)-value(b):(asc?value(a)-value(b):value(b)-value(a));
    return d||(+a.dataset.index)-(+b.dataset.index);
  });
  cards.forEach(function(c){box.appendChild(c);});
  document.body.dataset.sortedBy=spec;
  document.querySelectorAll('nav a').forEach(function(a){a.classList.toggle('active',a.getAttribute('href')==='#sort='+spec);});
}
function sortFromHash(){var m=/sort=([A-Za-z0-9-]+)/.exec(location.hash);sortCards(m?m[1]:'index');}
window.addEventListener('hashchange',sortFromHash);
sortFromHash();
"""


def render_report(results: dict, cards: list[Card]) -> str:
    title = f"{results.get('dataset', '')}/{results.get('split', '')} — {results.get('checkpoint_dir', '')}"
    present = [m for m in CARD_METRICS if any(m in c.scores for c in cards)]
    links = ['<a href="#sort=index">dataset order</a>'] + [
        f'<a href="#sort={sort_key(m)}">{m} high→low</a><a href="#sort={sort_key(m)}-asc">{m} low→high</a>'
        for m in present
    ]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{results.get('n_items', len(cards))} items, stage {html.escape(str(results.get('stage', '')))}; "
        "corpus-level COCO caption metrics (per-example scores use the same corpus statistics).</p>"
        f"{metrics_table(results)}<ul>{facts(results)}</ul>"
        f"<nav>sort: {''.join(links)}</nav>"
        f"<main id=cards>{''.join(card_html(c) for c in cards)}</main>"
        f"<script>{SCRIPT}</script></body></html>"
    )
