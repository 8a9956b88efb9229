"""What only SynthPano can measure: captions of scenes where an object straddles the 0/360 seam
(where naively cut views split it in two) reported apart, and exact-match accuracy on its
question/answer pairs, per kind of question."""

from __future__ import annotations

from vlm_resampler.data.answers import normalise_answer, question_kind
from vlm_resampler.data.datasets import prepare_split, synthpano_root

QA_MAX_NEW_TOKENS = 12  # the longest answer, "a large yellow triangle." plus end of turn, is 7 tokens


def seam_subsets(items: list[dict], predictions: list[str], data_cfg, split: str, scorer) -> dict:
    """Caption metrics on the items whose panorama has an object across the seam, and on the rest."""
    from vlm_resampler.data.synthpano.files import seam_urls

    root = synthpano_root(data_cfg)
    seam = {str(root / url) for url in seam_urls(root / f"{split}_objects.jsonl")}
    out = {}
    for name, wanted in (("seam", True), ("no_seam", False)):
        chosen = [i for i, item in enumerate(items) if (str(item["image"]) in seam) == wanted]
        if chosen:
            scores = scorer.score([predictions[i] for i in chosen], [items[i]["references"] for i in chosen])
            out[name] = {"n_items": len(chosen), **scores}
    return out


def qa_items_for(items: list[dict], data_cfg, split: str) -> list[dict]:
    """SynthPano's question/answer pairs of the images being evaluated."""
    images = {str(item["image"]) for item in items}
    return [qa for qa in prepare_split(data_cfg, split, "qa") if str(qa["image"]) in images]


def answer_hits(qa_items: list[dict], answers: list[str]) -> list[bool]:
    """Whether each answer equals one of its references (case and punctuation ignored)."""
    return [
        normalise_answer(answer) in {normalise_answer(r) for r in item["references"]}
        for item, answer in zip(qa_items, answers, strict=True)
    ]


def kinds_of(qa_items: list[dict]) -> dict[str, list[int]]:
    """Kind of question -> the indices of its items, kinds in alphabetical order."""
    kinds: dict[str, list[int]] = {}
    for i, item in enumerate(qa_items):
        kinds.setdefault(question_kind(item["query"]), []).append(i)
    return dict(sorted(kinds.items()))


def exact_match(qa_items: list[dict], hits: list[bool]) -> dict:
    """Share of answers equal to the reference (`answer_hits`), overall and per kind."""
    by_kind = {kind: [hits[i] for i in chosen] for kind, chosen in kinds_of(qa_items).items()}
    return {
        "exact_match": round(sum(hits) / len(hits), 4) if hits else None,
        "n_items": len(hits),
        "by_kind": {kind: {"exact_match": round(sum(h) / len(h), 4), "n_items": len(h)} for kind, h in by_kind.items()},
    }


def qa_intervals(bootstrap, qa_items: list[dict], hits: list[bool]) -> dict[str, list[float]]:
    """Bootstrap intervals (evaluation/intervals.py) of exact match, overall (`QA`) and per kind
    (`QA_<kind>`), the names summaries give them."""
    images = [str(item["image"]) for item in qa_items]
    bounds = {"QA": bootstrap.interval(hits, images)}
    for kind, chosen in kinds_of(qa_items).items():
        bounds[f"QA_{kind}"] = bootstrap.interval([hits[i] for i in chosen], [images[i] for i in chosen])
    return bounds
