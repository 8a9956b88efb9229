"""Caption metrics exactly as the COCO caption toolkit computes them (pycocoevalcap): PTB
tokenisation, all references of an item together, corpus-level scores (CIDEr is CIDEr-D's
toolkit form, with the IDF of the whole evaluated set).

Nothing here imports torch: `launch/eval.py --csv-input` scores a file without a model.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path

# The names metrics.json uses, in the order tables show them.
METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# What SPICE's jar manifest puts on its class path; pycocoevalcap downloads them on first use,
# which cannot work here, so they are only ever looked for.
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
# Characters Java's line reader breaks lines at. The toolkit feeds one caption per line and
# only replaces "\n", so any of these would shift every later caption onto another item.
LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "the COCO caption toolkit needs Java (PTB tokenizer, METEOR) and `java` is not on PATH; "
            "install it with `apt-get install -y default-jre-headless`"
        )


def toolkit_dir() -> Path:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the COCO caption toolkit is not installed: pip install pycocoevalcap")
    return Path(list(spec.submodule_search_locations)[0])


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run; otherwise why not, naming what is missing and where."""
    lib = toolkit_dir() / "spice" / "lib"
    missing = [jar for jar in SPICE_JARS if not (lib / jar).is_file()]
    if not missing:
        return None
    return (
        f"needs Stanford CoreNLP jars ({', '.join(missing)}) in {lib}; not present, and they are "
        "never downloaded here (copy them there to enable SPICE)"
    )


@dataclass
class Scores:
    """Corpus-level scores, and each item's own score under the same corpus statistics."""

    corpus: dict[str, float]
    per_item: dict[str, list[float]] = field(default_factory=dict)


class CaptionScorer:
    """Scores predictions against references; starts the METEOR JVM once and reuses it.

    `with_spice=None` runs SPICE where its jars are present; `unavailable` names each metric
    that was skipped and why, for metrics.json.
    """

    def __init__(self, with_meteor: bool = True, with_spice: bool | None = None) -> None:
        require_java()
        self.unavailable: dict[str, str] = {}
        self._meteor = None
        self._spice = None
        if with_meteor:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        else:
            self.unavailable["METEOR"] = "switched off (meteor=false)"
        if with_spice is not False:
            reason = spice_unavailable_reason()
            if reason is None:
                from pycocoevalcap.spice.spice import Spice

                self._spice = Spice()
            elif with_spice:
                raise RuntimeError(f"SPICE was asked for but {reason}")
            else:
                self.unavailable["SPICE"] = reason

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.meteor_p.stdin.close()
            self._meteor.meteor_p.kill()
            self._meteor.meteor_p.wait()
            self._meteor = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return self.score_items(predictions, references).corpus

    def score_items(self, predictions: list[str], references: list[list[str]]) -> Scores:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        check_inputs(predictions, references)
        gts, res = tokenize(predictions, references)
        bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
        scores = Scores({f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)})
        scores.per_item["BLEU-4"] = [float(s) for s in bleu_items[3]]
        if self._meteor is not None:
            corpus, items = self._meteor.compute_score(gts, res)
            scores.corpus["METEOR"], scores.per_item["METEOR"] = float(corpus), [float(s) for s in items]
        corpus, items = Rouge().compute_score(gts, res)
        scores.corpus["ROUGE-L"], scores.per_item["ROUGE-L"] = float(corpus), [float(s) for s in items]
        corpus, items = Cider().compute_score(gts, res)
        scores.corpus["CIDEr"], scores.per_item["CIDEr"] = float(corpus), [float(s) for s in items]
        if self._spice is not None:
            corpus, items = self._spice.compute_score(gts, res)
            scores.corpus["SPICE"], scores.per_item["SPICE"] = float(corpus), [float(s["All"]["f"]) for s in items]
        return scores


def check_inputs(predictions: list[str], references: list[list[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"item {i} has no reference caption")


def tokenize(predictions: list[str], references: list[list[str]]) -> tuple[dict, dict]:
    """PTB-tokenised references and predictions keyed by item index, as the toolkit's scorers
    take them. One tokenizer run for both: it works line by line, so this equals the toolkit's
    two runs and starts one JVM fewer."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    n = len(predictions)
    captions = {i: [{"caption": r.translate(LINE_BREAKS)} for r in refs] for i, refs in enumerate(references)}
    captions.update({n + i: [{"caption": p.translate(LINE_BREAKS)}] for i, p in enumerate(predictions)})
    tokens = PTBTokenizer().tokenize(captions)
    # The toolkit pairs the JVM's output lines with the captions and keeps going when there are
    # fewer: a JVM that failed (its error went to stderr) yields one empty caption, not an error.
    returned = sum(len(tokens.get(i, ())) for i in captions)
    expected = sum(len(c) for c in captions.values())
    if returned != expected:
        raise RuntimeError(
            f"the PTB tokenizer (Java, {shutil.which('java')}) returned {returned} of {expected} captions; "
            "Java's own error, if it printed one, is above"
        )
    return {i: tokens[i] for i in range(n)}, {i: tokens[n + i] for i in range(n)}
