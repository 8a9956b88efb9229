"""Caption metrics through the COCO toolkit: equal to pycocoevalcap's own scorers on a fixed,
hand-written caption set, and sanity that could fail if the wiring were wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vlm_resampler.evaluation import metrics
from vlm_resampler.evaluation.metrics import METRIC_NAMES, CaptionScorer

PARITY = Path(__file__).parent / "data" / "caption_parity.json"
REFERENCES = [
    ["a red circle in front.", "in front there is a red circle."],
    [
        "a blue square on the left and a white triangle behind.",
        "on the left there is a blue square; behind, a white triangle.",
    ],
]


def parity_items() -> list[dict]:
    return json.loads(PARITY.read_text(encoding="utf-8"))["items"]


def toolkit_scores(items: list[dict]) -> tuple[dict, list[float]]:
    """The oracle: what pycocoevalcap's COCOEvalCap.evaluate does (one id per image-and-query,
    every reference under it, PTB tokenisation of each side, then each scorer), SPICE left out."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {i: [{"image_id": i, "caption": r} for r in item["references"]] for i, item in enumerate(items)}
    res = {i: [{"image_id": i, "caption": item["prediction"]}] for i, item in enumerate(items)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    out = {}
    bleu, _ = Bleu(4).compute_score(gts, res)
    out.update({f"BLEU-{n + 1}": bleu[n] for n in range(4)})
    meteor = Meteor()
    out["METEOR"], _ = meteor.compute_score(gts, res)
    del meteor  # its __del__ stops the JVM
    out["ROUGE-L"], _ = Rouge().compute_score(gts, res)
    out["CIDEr"], cider_items = Cider().compute_score(gts, res)
    return out, list(cider_items)


@pytest.fixture(scope="module")
def scorer():
    with CaptionScorer() as s:
        yield s


@pytest.fixture(scope="module")
def toolkit():
    return toolkit_scores(parity_items())


def test_the_parity_set_is_varied_enough_to_mean_something():
    items = parity_items()
    assert len(items) >= 30 and all(2 <= len(i["references"]) <= 5 for i in items)
    text = " ".join(i["prediction"] + " ".join(i["references"]) for i in items)
    assert any(i["prediction"] == "" for i in items), "an empty prediction"
    assert any(c.isdigit() for c in text) and any(ord(c) > 127 for c in text) and any(c in text for c in ';:!?"()')
    assert any(i["prediction"].isupper() for i in items), "a prediction in capitals"


def test_scores_equal_the_toolkit_on_the_parity_set(scorer, toolkit):
    expected, expected_cider_items = toolkit
    items = parity_items()
    found = scorer.score_items([i["prediction"] for i in items], [i["references"] for i in items])
    assert set(found.corpus) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert found.corpus[name] == pytest.approx(expected[name], abs=1e-6), name
    # Per-example CIDEr (the report sorts by it) uses the corpus IDF, as the toolkit's does.
    assert found.per_item["CIDEr"] == pytest.approx(expected_cider_items, abs=1e-6)
    assert 0.1 < found.corpus["CIDEr"] < 5 and 0 < found.corpus["METEOR"] < 1, "a degenerate set would prove little"


def test_grouping_is_by_item_not_by_order_of_references(scorer, toolkit):
    """Shuffling the items changes nothing: scores are attached to items, not positions."""
    items = parity_items()[::-1]
    found = scorer.score_items([i["prediction"] for i in items], [i["references"] for i in items])
    assert found.corpus["CIDEr"] == pytest.approx(toolkit[0]["CIDEr"], abs=1e-6)
    assert found.per_item["CIDEr"][::-1] == pytest.approx(toolkit[1], abs=1e-6)


def test_a_line_break_inside_a_caption_does_not_shift_later_items(scorer):
    """The toolkit writes one caption per line and only replaces "\\n": a "\\r" or U+2028 in a
    caption would move every later caption onto the wrong item. Ours treats them as spaces."""
    predictions = ["a red\rcircle in front.", "a blue square\u2028on the left and a white triangle behind."]
    plain = ["a red circle in front.", "a blue square on the left and a white triangle behind."]
    with_breaks = scorer.score_items(predictions, REFERENCES)
    without = scorer.score_items(plain, REFERENCES)
    assert with_breaks.per_item["CIDEr"] == pytest.approx(without.per_item["CIDEr"])


def test_spice_is_reported_unavailable_with_the_reason_and_detected_when_its_jars_exist(scorer, tmp_path, monkeypatch):
    if metrics.spice_unavailable_reason() is None:
        pytest.skip("the CoreNLP jars are installed here: SPICE runs")
    assert "stanford-corenlp-3.6.0" in scorer.unavailable["SPICE"] and "spice/lib" in scorer.unavailable["SPICE"]
    lib = tmp_path / "spice" / "lib"
    lib.mkdir(parents=True)
    for jar in metrics.SPICE_JARS[:1]:
        (lib / jar).write_bytes(b"")
    monkeypatch.setattr(metrics, "toolkit_dir", lambda: tmp_path)
    assert "stanford-corenlp-3.6.0-models.jar" in metrics.spice_unavailable_reason()
    (lib / metrics.SPICE_JARS[1]).write_bytes(b"")
    assert metrics.spice_unavailable_reason() is None


def test_an_exact_reference_scores_higher_than_a_wrong_caption():
    with CaptionScorer(with_meteor=False) as scorer:
        exact = scorer.score([refs[0] for refs in REFERENCES], REFERENCES)
        wrong = scorer.score(["a green triangle on the right."] * 2, REFERENCES)
    assert exact["BLEU-4"] > 0.9 and exact["ROUGE-L"] > 0.9
    assert exact["CIDEr"] > wrong["CIDEr"] and wrong["BLEU-4"] < 0.1


def test_a_java_that_fails_is_an_error_not_empty_captions(tmp_path, monkeypatch):
    # A JVM that cannot start the tokenizer (a cut-down runtime lacking java.logging did exactly
    # this) prints to stderr and writes nothing; the toolkit then returns one empty caption.
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'NoClassDefFoundError: java/util/logging/Logger' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match=rf"PTB tokenizer \(Java, {tmp_path}/java\) returned 1 of 3 captions"):
        metrics.tokenize(["a cat"], [["a dog", "one dog"]])


def test_mismatched_or_empty_inputs_are_errors():
    with CaptionScorer(with_meteor=False) as scorer:
        with pytest.raises(ValueError, match="2 predictions but 1 reference"):
            scorer.score(["a", "b"], [["a"]])
        with pytest.raises(ValueError, match="item 0 has no reference"):
            scorer.score(["a"], [[]])
