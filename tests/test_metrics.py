"""Caption metrics through the COCO toolkit: sanity that could fail if the wiring were wrong."""
from __future__ import annotations

import pytest

from vlm_resampler.evaluation.metrics import CaptionScorer

REFERENCES = [
    ["a red circle in front.", "in front there is a red circle."],
    ["a blue square on the left and a white triangle behind.", "on the left there is a blue square; behind, a white triangle."],
]


def test_an_exact_reference_scores_higher_than_a_wrong_caption():
    with CaptionScorer(with_meteor=False) as scorer:
        exact = scorer.score([refs[0] for refs in REFERENCES], REFERENCES)
        wrong = scorer.score(["a green triangle on the right."] * 2, REFERENCES)
    assert exact["BLEU-4"] > 0.9 and exact["ROUGE-L"] > 0.9
    assert exact["CIDEr"] > wrong["CIDEr"] and wrong["BLEU-4"] < 0.1


def test_mismatched_or_empty_inputs_are_errors():
    with CaptionScorer(with_meteor=False) as scorer:
        with pytest.raises(ValueError, match="2 predictions but 1 reference"):
            scorer.score(["a", "b"], [["a"]])
        with pytest.raises(ValueError, match="item 0 has no reference"):
            scorer.score(["a"], [[]])
