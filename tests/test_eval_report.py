"""report.html: self-contained, one card per example with the panorama and the model's own
views, sortable by per-example CIDEr; opened in a real headless browser where one exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from vlm_resampler.evaluation.report import Card, jpeg_data_uri, render_report

BROWSER = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
)
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="no headless browser here (apt-get install -y --no-install-recommends chromium; .ci/run does)",
)

RESULTS = {
    "checkpoint_dir": "runs/x/finetune",
    "stage": "finetune",
    "dataset": "synthpano",
    "split": "test",
    "n_items": 4,
    "model": {
        "BLEU-1": 0.5,
        "BLEU-2": 0.4,
        "BLEU-3": 0.3,
        "BLEU-4": 0.2,
        "METEOR": 0.25,
        "ROUGE-L": 0.45,
        "CIDEr": 0.9,
    },
    "baselines": {
        "untrained": {"BLEU-4": 0.0, "CIDEr": 0.01},
        "constant_caption": {"BLEU-4": 0.1, "CIDEr": 0.3, "caption": "a red circle."},
    },
    "unavailable": {"SPICE": "needs Stanford CoreNLP jars"},
}


def dump_dom(page: Path, fragment: str, tmp_path: Path) -> str:
    """The DOM after the page's scripts ran, as the browser holds it."""
    done = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.resolve().as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def card_order(dom: str) -> list[int]:
    return [int(i) for i in re.findall(r'<article class="card" data-index="(\d+)"', dom)]


def synthetic_cards() -> list[Card]:
    from PIL import Image

    thumb = jpeg_data_uri(Image.new("RGB", (32, 16), (200, 30, 30)), 70)
    ciders = [0.5, 2.0, 0.0, 1.25]
    return [
        Card(
            index=i,
            image=f"p{i}.png",
            query="Describe the panorama.",
            prediction=f"caption {i} <b>not bold</b>",
            references=[f"ref {i} a", f"ref {i} b"],
            scores={"CIDEr": c, "BLEU-4": 1 - c / 2},
            panorama=thumb,
            views=[("view 0", thumb), ("view 1", thumb)],
        )
        for i, c in enumerate(ciders)
    ]


def test_the_page_is_self_contained_and_escapes_text(tmp_path):
    page = render_report(RESULTS, synthetic_cards())
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<link" not in page
    assert all(src.startswith("data:image/jpeg;base64,") for src in re.findall(r'src="([^"]+)"', page))
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page and "<b>not bold</b>" not in page
    assert page.count('<article class="card"') == 4
    for name in (
        "BLEU-1",
        "BLEU-4",
        "METEOR",
        "ROUGE-L",
        "CIDEr",
        "untrained",
        "constant_caption",
        "SPICE not computed",
    ):
        assert name in page, name


@needs_browser
def test_cards_sort_by_cider_in_a_real_browser(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_report(RESULTS, synthetic_cards()), encoding="utf-8")
    plain = dump_dom(page, "", tmp_path)
    assert card_order(plain) == [0, 1, 2, 3] and 'data-sorted-by="index"' in plain, "the script ran"
    assert card_order(dump_dom(page, "#sort=cider", tmp_path)) == [1, 3, 0, 2]
    low_first = dump_dom(page, "#sort=cider-asc", tmp_path)
    assert card_order(low_first) == [2, 0, 3, 1] and 'data-sorted-by="cider-asc"' in low_first


@pytest.fixture(scope="module")
def smoke_model(smoke_config):
    from omegaconf import OmegaConf

    from vlm_resampler.data.datasets import prepare_split
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.run import resolved_container

    cfg = resolved_container(smoke_config())
    data = OmegaConf.create(cfg["data"])
    return build_model(cfg["model"], seed=0).eval(), data, prepare_split(data, "test")


def test_an_eval_report_shows_the_models_own_views_and_per_example_cider(smoke_model, tmp_path):
    """What evaluate_checkpoint writes, on the smoke model and data: views cut by model.views,
    per-example CIDEr from the scorer (corpus IDF) on each card."""
    from vlm_resampler.evaluation.evaluate import write_report
    from vlm_resampler.evaluation.metrics import CaptionScorer
    from vlm_resampler.evaluation.settings import ReportSettings

    model, data, items = smoke_model
    predictions = [item["references"][0] for item in items[:-1]] + ["a caption that matches nothing"]
    with CaptionScorer(with_meteor=False) as scorer:
        scored = scorer.score_items(predictions, [item["references"] for item in items])
    results = dict(RESULTS, model=scored.corpus, n_items=len(items))
    page = tmp_path / "report.html"
    settings = ReportSettings(enabled=True, panorama_width=128, view_size=48, jpeg_quality=60)
    write_report(page, results, model, items, predictions, scored.per_item, data, settings)
    html = page.read_text(encoding="utf-8")
    assert html.count('<article class="card"') == len(items)
    assert html.count('<img class="view"') == len(items) * model.num_views
    ciders = [float(c) for c in re.findall(r'data-cider="([^"]+)"', html)]
    assert ciders == pytest.approx(scored.per_item["CIDEr"]) and ciders[-1] < max(ciders)
    if BROWSER:
        order = card_order(dump_dom(page, "#sort=cider", tmp_path))
        assert [ciders[i] for i in order] == sorted(ciders, reverse=True)


def test_view_thumbnails_are_the_view_strategys_cut(smoke_model):
    import base64
    import io

    import numpy as np
    from PIL import Image

    from vlm_resampler.evaluation.report import example_images

    model = smoke_model[0]
    panorama = torch.zeros(3, 64, 128)
    panorama[0, :, :64] = 1.0  # red left half, black right half
    _, views = example_images(model.views, panorama, 64, 32, 90)
    assert len(views) == model.num_views
    expected = model.views.views(panorama)
    for (label, uri), view in zip(views, expected):
        img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        red = np.asarray(img.convert("RGB"), dtype=np.float32)[..., 0].mean() / 255
        assert float(red) == pytest.approx(float(view[0].mean()), abs=0.05), label
        assert label.startswith("view ") and "yaw" in label
