"""The freeze matrix: which parameter groups each stage trains. Stage names are data (conf/stage)."""
from __future__ import annotations

from torch import nn

from vlm_resampler.models.lora import lora_parameters

OBJECTIVES = ("overlap_vicreg", "next_token")


def vision_last_blocks(model, count: int) -> dict[str, nn.Parameter]:
    if count == 0:
        return {}
    blocks = model.vision.blocks
    chosen = blocks if count < 0 else blocks[len(blocks) - count :]
    return {f"vision.block.{n}": p for n, p in chosen.named_parameters()}


def trainable_groups(model, stage) -> dict[str, dict[str, nn.Parameter]]:
    """Group name -> parameters that the stage trains."""
    groups: dict[str, dict[str, nn.Parameter]] = {}
    for name in stage.train:
        if name not in ("resampler", "projector", "overlap_head"):
            raise ValueError(
                f"stage.{stage.name}.train: unknown module {name!r}; expected some of "
                "['resampler', 'projector', 'overlap_head'] (LoRA and vision blocks have their own keys)"
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
