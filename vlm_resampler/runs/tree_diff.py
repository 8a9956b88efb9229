"""Where two plain config trees differ: a resumed run's config against the one it started with,
a stage's model settings against its checkpoint's."""

from __future__ import annotations


def tree_differences(a, b, where: str = "") -> list[str]:
    """Paths where two plain config trees differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += tree_differences(
                a.get(key, "<absent>"), b.get(key, "<absent>"), f"{where}.{key}" if where else str(key)
            )
        return out
    return [] if a == b else [f"{where}: {a!r} here, {b!r} in the checkpoint"]
