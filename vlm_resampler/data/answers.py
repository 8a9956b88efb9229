"""How a SynthPano answer is compared with its references, and which kind of question asked for
it: shared by the eval's exact match and the code reader's own accuracy."""

from __future__ import annotations

import re


def normalise_answer(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def question_kind(query: str) -> str:
    """count, colour, size, pole ("What is above?" / "What is below?", apart from the horizon:
    views around the horizon may not see the poles) or direction (what is in front, ...)."""
    if query.startswith("How many"):
        return "count"
    if query.startswith("Which colour"):
        return "colour"
    if query.startswith("What size"):
        return "size"
    if query in ("What is above?", "What is below?"):
        return "pole"
    return "direction"
