"""LoRA on the language model through peft, configured from plain data so it can be recorded."""

from __future__ import annotations

import warnings

from torch import nn

LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "modules_to_save")


def trained_whole(lora: dict) -> list[str]:
    """The LLM modules a LoRA config trains outright (peft `modules_to_save`).

    Model trees written before the key existed trained none: for them an empty list is the fact,
    not a default (every stage config in conf/ spells the key out)."""
    return list(lora.get("modules_to_save") or [])


def attach_lora(language_model: nn.Module, lora: dict) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    unknown = set(lora) - set(LORA_KEYS)
    if unknown:
        raise ValueError(f"lora: unknown keys {sorted(unknown)}; expected {list(LORA_KEYS)}")
    modules_to_save = trained_whole(lora)
    config = LoraConfig(
        r=int(lora["r"]),
        lora_alpha=float(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=list(lora["target_modules"]),
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft warns when LoRA targets a layer tied to the input embeddings (lm_head): the LoRA
        # delta applies to the output side only, which is what we want; the tie itself is untouched.
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*ensure_weight_tying.*")
        return get_peft_model(language_model, config)


def lora_parameters(language_model: nn.Module) -> dict[str, nn.Parameter]:
    """What a LoRA stage trains in the LLM: the low-rank factors and peft's trained copies of the
    `modules_to_save`."""
    return {n: p for n, p in language_model.named_parameters() if ".lora_" in n or ".modules_to_save." in n}
