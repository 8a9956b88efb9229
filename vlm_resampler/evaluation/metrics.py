"""Caption metrics exactly as the COCO caption toolkit computes them (pycocoevalcap): PTB
tokenisation, all references of an item together, corpus-level scores."""
from __future__ import annotations

import shutil


def require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "the COCO caption toolkit needs Java (PTB tokenizer, METEOR) and `java` is not on PATH; "
            "install it with `apt-get install -y default-jre-headless`"
        )


class CaptionScorer:
    """Scores predictions against references; starts the METEOR JVM once and reuses it."""

    def __init__(self, with_meteor: bool = True) -> None:
        require_java()
        self._meteor = None
        if with_meteor:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.meteor_p.stdin.close()
            self._meteor.meteor_p.kill()
            self._meteor.meteor_p.wait()
            self._meteor = None

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
        if not predictions:
            raise ValueError("nothing to score: no predictions")
        for i, refs in enumerate(references):
            if not refs:
                raise ValueError(f"item {i} has no reference caption")
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
        res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores = {f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)}
        if self._meteor is not None:
            scores["METEOR"] = float(self._meteor.compute_score(gts, res)[0])
        scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        return scores
