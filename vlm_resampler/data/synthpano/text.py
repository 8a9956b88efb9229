"""SynthPano's words: the reference captions of a scene and its question/answer pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlm_resampler.data.synthpano.objects import DIRECTIONS, SceneObject

DEFAULT_QUERY = "Describe the panorama."


# "at" phrases answer "where is it?", "toward" phrases follow "shows ... ", "lead" phrases open
# "... there is".
_AT_PHRASE = {
    "front": "in front",
    "right": "on the right",
    "behind": "behind",
    "left": "on the left",
    "above": "above",
    "below": "below",
}
_TOWARD_PHRASE = {
    "front": "ahead",
    "right": "to the right",
    "behind": "behind",
    "left": "to the left",
    "above": "overhead",
    "below": "underfoot",
}
_LEAD_PHRASE = {**_AT_PHRASE, "above": "up above", "below": "down below"}
_NUMBER_WORD = {1: "one", 2: "two", 3: "three"}

# --------------------------------------------------------------------------- captions


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _noun(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape}"


def describe_objects(objects: Sequence[SceneObject], rng: np.random.Generator) -> list[str]:
    """Four reference captions, each naming every object's size, colour, shape and direction.

    ``objects`` must be in canonical direction order; the last phrasing lists them in a random
    order so that the model cannot rely on position alone.
    """
    if not 1 <= len(objects) <= len(_NUMBER_WORD):
        raise ValueError(f"expected 1-{len(_NUMBER_WORD)} objects, got {len(objects)}")
    listing = _join([f"{_noun(o)} {_AT_PHRASE[o.direction]}" for o in objects])
    located = "; ".join(f"{_LEAD_PHRASE[o.direction]} there is {_noun(o)}" for o in objects)
    shows = _join([f"{_noun(o)} {_TOWARD_PHRASE[o.direction]}" for o in objects])
    shuffled = [objects[i] for i in rng.permutation(len(objects))]
    count = _NUMBER_WORD[len(objects)]
    counted_head = "there is one object" if len(objects) == 1 else f"there are {count} objects"
    counted = _join([f"{_noun(o)} {_AT_PHRASE[o.direction]}" for o in shuffled])
    return [
        f"{listing}.",
        f"{located}.",
        f"the panorama shows {shows}.",
        f"{counted_head}: {counted}.",
    ]


def question_answers(objects: Sequence[SceneObject]) -> list[tuple[str, str]]:
    """Short questions with one exact answer each: what is in each direction, above and below
    included (or nothing), how many objects, and which colour and what size each object is."""
    by_direction = {o.direction: o for o in objects}
    pairs = []
    for direction in DIRECTIONS:
        obj = by_direction.get(direction)
        pairs.append((f"What is {_AT_PHRASE[direction]}?", f"{_noun(obj)}." if obj else "nothing."))
    pairs.append(("How many objects are there?", f"{_NUMBER_WORD[len(objects)]}."))
    for obj in objects:
        pairs.append((f"Which colour is the {obj.shape} {_AT_PHRASE[obj.direction]}?", f"{obj.colour}."))
    for obj in objects:
        pairs.append((f"What size is the {obj.colour} {obj.shape} {_AT_PHRASE[obj.direction]}?", f"{obj.size}."))
    return pairs
