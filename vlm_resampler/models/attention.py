"""How the towers and the LLM compute attention (train.yaml `attn_implementation`), in a module
that imports nothing heavy: train.py's checks read it before transformers is loaded."""

from __future__ import annotations

# Both are exact attention and give the same numbers up to float rounding; sdpa (torch's fused
# kernels) keeps no attention matrix for the backward pass, eager keeps one per layer
# (heads x tokens^2 values).
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def check_attention(attn_implementation: str, key: str) -> None:
    """`key`: the setting's name in messages (train.yaml's, or a loader's in the model tree)."""
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"{key}={attn_implementation!r}: expected one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
