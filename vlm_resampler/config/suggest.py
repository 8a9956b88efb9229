"""Closest valid names for a typo."""
from __future__ import annotations

import difflib


def closest(name: str, candidates, n: int = 3) -> list[str]:
    candidates = [str(c) for c in candidates]
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not found:
        lowered = name.lower()
        found = [c for c in candidates if lowered in c.lower() or c.lower() in lowered][:n]
    return found


def did_you_mean(name: str, candidates) -> str:
    found = closest(name, candidates)
    return f" Did you mean {' or '.join(repr(f) for f in found)}?" if found else ""
