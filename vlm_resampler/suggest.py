"""Closest valid names for a typo."""

from __future__ import annotations

import difflib


def one_edit_apart(a: str, b: str) -> bool:
    """One character inserted, deleted, replaced, or two neighbours swapped (case ignored)."""
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        )
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def closest(name: str, candidates, n: int = 3) -> list[str]:
    candidates = [str(c) for c in candidates]
    # A single-character slip always names its key first, however short the key.
    near = [c for c in candidates if one_edit_apart(name, c)]
    found = near + [c for c in difflib.get_close_matches(name, candidates, n=n, cutoff=0.5) if c not in near]
    if not found:
        lowered = name.lower()
        found = [c for c in candidates if lowered in c.lower() or c.lower() in lowered]
    return found[:n]


def did_you_mean(name: str, candidates) -> str:
    found = closest(name, candidates)
    return f" Did you mean {' or '.join(repr(f) for f in found)}?" if found else ""
