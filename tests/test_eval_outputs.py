"""A model eval through the CLI writes predictions.csv, metrics.json and report.html together;
and predictions.csv scored again with --csv-input gives the same numbers."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from test_eval_report import BROWSER, card_order, dump_dom

from conftest import run_cli


@pytest.mark.slow
def test_a_model_eval_writes_metrics_and_a_report_and_its_predictions_score_the_same(tmp_path):
    run_dir = tmp_path / "runs" / "one-step"
    done = run_cli(
        "train.py",
        "debug=smoke",
        "stages=[finetune]",
        "stage.finetune.max_steps=1",
        "experiment.name=one-step",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_cli("eval.py", f"checkpoint_dir={run_dir / 'finetune'}", "debug=smoke", "batch_size=3")
    assert done.returncode == 0, done.stderr[-3000:]
    out = run_dir / "finetune" / "eval" / "synthpano-test"
    metrics = json.loads((out / "metrics.json").read_text())
    generation = metrics["generation"]
    # device=auto: the GPU when there is one, and float32 (the saved weights' precision) by default
    assert generation["device"].split()[0] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert generation["precision"] == "fp32"
    assert "report.html" in done.stdout
    assert f"generated tokens/s at batch 3 on {generation['device']} in fp32 (greedy)" in done.stdout
    assert set(metrics["model"]) >= {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    assert generation["batch_size"] == 3 and generation["decoding"] == "greedy"
    assert "SPICE" in metrics["unavailable"] or "SPICE" in metrics["model"]

    # Every question with its answer, from which the reported exact match can be recomputed.
    from vlm_resampler.data.answers import normalise_answer

    with open(out / "qa_predictions.csv", newline="", encoding="utf-8") as f:
        answered = list(csv.DictReader(f))
    assert len(answered) == metrics["qa"]["n_items"] > 0
    hits = [
        normalise_answer(r["prediction"]) in {normalise_answer(a) for a in json.loads(r["references"])}
        for r in answered
    ]
    assert round(sum(hits) / len(hits), 4) == metrics["qa"]["exact_match"]

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<article class="card"') == metrics["n_items"]
    assert "untrained" in page and "constant_caption" in page
    if BROWSER:
        ciders = [float(c) for c in re.findall(r'data-cider="([^"]+)"', page)]
        order = card_order(dump_dom(out / "report.html", "#sort=cider", tmp_path))
        assert [ciders[i] for i in order] == sorted(ciders, reverse=True)

    rescored = tmp_path / "rescored"
    done = run_cli("eval.py", "--csv-input", str(out / "predictions.csv"), "--out", str(rescored))
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((rescored / "metrics.json").read_text())["model"]
    for name, value in metrics["model"].items():
        assert again[name] == pytest.approx(value, abs=1e-9), name
