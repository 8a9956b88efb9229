"""The freeze matrix: which parameter groups each stage trains. Stage names are data (conf/stage)."""

from __future__ import annotations

from omegaconf import OmegaConf
from torch import nn

from vlm_resampler.models.lora import attach_lora, lora_parameters

OBJECTIVES = ("overlap_vicreg", "next_token")
TRAINABLE_MODULES = ("resampler", "projector", "overlap_head", "stitch")


def vision_last_blocks(model, count: int) -> dict[str, nn.Parameter]:
    if count == 0:
        return {}
    blocks = model.vision.blocks
    chosen = blocks if count < 0 else blocks[len(blocks) - count :]
    return {f"vision.block.{n}": p for n, p in chosen.named_parameters()}


def attach_stage_lora(model, stage) -> dict | None:
    """Give the LLM the stage's LoRA if it has none yet; returns the LoRA config it attached.

    A model that already carries a LoRA (from an earlier stage) must carry this very one."""
    if not stage.get("lora"):
        return None
    lora = OmegaConf.to_container(stage.lora)
    if model.lora_config is None:
        model.llm = attach_lora(model.llm, lora)
        model.lora_config = lora
        return lora
    if model.lora_config != lora:
        raise ValueError(
            f"stage.{stage.name}.lora={lora} differs from the LoRA of the checkpoint it starts from "
            f"({model.lora_config}); a LoRA cannot change shape between stages"
        )
    return None


def trainable_groups(model, stage) -> dict[str, dict[str, nn.Parameter]]:
    """Group name -> parameters that the stage trains."""
    groups: dict[str, dict[str, nn.Parameter]] = {}
    for name in stage.train:
        if name not in TRAINABLE_MODULES:
            raise ValueError(
                f"stage.{stage.name}.train: unknown module {name!r}; expected some of "
                f"{list(TRAINABLE_MODULES)} (LoRA and vision blocks have their own keys)"
            )
        groups[name] = dict(getattr(model, name).named_parameters())
    if stage.get("lora"):
        lora = lora_parameters(model.llm)
        if not lora:
            raise ValueError(f"stage.{stage.name}.lora is set but the language model has no LoRA weights")
        groups["lora"] = lora
    blocks = vision_last_blocks(model, int(stage.vision_trainable_blocks))
    if blocks:
        groups["vision_blocks"] = blocks
    return groups


def apply_freeze(model, stage) -> list[tuple[str, int]]:
    """Freeze everything, unfreeze the stage's groups, then check that exactly those train.

    Returns (group, parameter count) rows for the log.
    """
    model.requires_grad_(False)
    groups = trainable_groups(model, stage)
    wanted = set()
    for params in groups.values():
        for p in params.values():
            p.requires_grad_(True)
            wanted.add(id(p))
    actual = {id(p) for p in model.parameters() if p.requires_grad}
    if actual != wanted:
        raise RuntimeError(f"stage {stage.name}: trainable parameters differ from the freeze matrix")
    if not wanted:
        raise ValueError(f"stage {stage.name} trains nothing: set stage.{stage.name}.train")
    return [(name, sum(p.numel() for p in params.values())) for name, params in groups.items()]


def format_trainable(stage_name: str, rows: list[tuple[str, int]], model) -> str:
    total = sum(p.numel() for p in model.parameters())
    trained = sum(n for _, n in rows)
    lines = [f"stage {stage_name}: training {trained:,} of {total:,} parameters"]
    lines += [f"  {name:<14} {count:>12,}" for name, count in rows]
    return "\n".join(lines)
