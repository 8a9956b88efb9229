"""Exact parameter counts per module and per stage (the trainer's own freeze matrix), tokens per
image, and the report of one source."""

from __future__ import annotations

import warnings

from omegaconf import OmegaConf

from vlm_resampler.errors import ConfigError
from vlm_resampler.inspection.meta import build_on_meta
from vlm_resampler.inspection.sources import Source
from vlm_resampler.runs.metadata import resampler_record

MODULES = ("vision", "resampler", "projector", "overlap_head", "llm", "lora")  # and any other part with parameters

# ---------------------------------------------------------------------------------------------
# Counting.
# ---------------------------------------------------------------------------------------------


def count(parameters) -> int:
    """Number of scalars, each shared tensor once (tied embeddings count once, as in model.parameters())."""
    seen, total = set(), 0
    for p in parameters:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def module_counts(model) -> dict[str, int]:
    from vlm_resampler.models.lora import lora_parameters

    lora = lora_parameters(model.llm)
    lora_ids = {id(p) for p in lora.values()}
    children = dict(model.named_children())
    # The parts every model has, then any other part with parameters (in the model's order).
    names = [m for m in MODULES if m in children] + [n for n in children if n not in MODULES]
    counts = {name: count(children[name].parameters()) for name in names if name != "llm"}
    counts = {name: n for name, n in counts.items() if n or name in MODULES}
    counts["llm"] = count(p for p in model.llm.parameters() if id(p) not in lora_ids)
    counts["lora"] = count(lora.values())
    total = count(model.parameters())
    if sum(counts.values()) != total:
        raise RuntimeError(f"module counts {counts} do not add up to the model's {total:,} parameters")
    return counts | {"total": total}


def parts(module) -> dict[str, int]:
    """Parameter count of each direct parameter and child of a module (children without any left out)."""
    out = {name: p.numel() for name, p in module.named_parameters(recurse=False)}
    for name, child in module.named_children():
        n = count(child.parameters())
        if n:
            out[name] = n
    return out


def repeated(module, name: str) -> tuple[int, int] | None:
    """(copies, count each) when the child `name` is a list of identical-size blocks."""
    from torch import nn

    child = getattr(module, name, None)
    if isinstance(child, nn.ModuleList) and len(child) > 1:
        sizes = {count(block.parameters()) for block in child}
        if len(sizes) == 1:
            return len(child), sizes.pop()
    return None


def stage_counts(model, source: Source) -> dict[str, dict]:
    """Per stage, in order: what trains (the trainer's own apply_freeze) and what stays frozen."""
    import torch

    from vlm_resampler.training.stages import apply_freeze, attach_stage_lora

    out = {}
    for name in source.stages:
        settings = source.stage_configs.get(name)
        if settings is None:
            recorded = dict(source.recorded_trainable or {})
            trained = sum(recorded.values())
            total = count(model.parameters())
            out[name] = {
                "trains": list(recorded),
                "trainable": recorded,
                "trainable_total": trained,
                "frozen": total - trained,
                "total": total,
            }
            continue
        stage = OmegaConf.create(settings)
        try:
            with torch.device("meta"):
                attach_stage_lora(model, stage)
            rows = apply_freeze(model, stage)
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"stage {name}: {err}") from err
        trained = sum(n for _, n in rows)
        total = count(model.parameters())
        out[name] = {
            "trains": [group for group, _ in rows],
            "trainable": dict(rows),
            "trainable_total": trained,
            "frozen": total - trained,
            "total": total,
        }
    return out


def inspect_source(source: Source, gpu_gib: float | None = None, batch_size: int | None = None) -> dict:
    """The report of one source (plain data: what --json prints); the memory plan for a GPU of
    `gpu_gib` GiB (else for this CPU), at `batch_size` (else each stage's own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations raised inside peft
        return _inspect(source, gpu_gib, batch_size)


def _inspect(source: Source, gpu_gib: float | None = None, batch_size: int | None = None) -> dict:
    from vlm_resampler.inspection.host_memory import host_plan
    from vlm_resampler.inspection.memory import memory_plans
    from vlm_resampler.training.feature_cache import feature_bytes

    model = build_on_meta(source.model_tree)
    stages = stage_counts(model, source)  # before counting modules: a stage may attach LoRA
    notes = list(source.notes)
    if source.recorded_trainable is not None and source.stage_configs.get(source.stages[0]) is not None:
        computed = stages[source.stages[0]]["trainable"]
        if computed != source.recorded_trainable:
            notes.append(
                f"the metadata recorded trainable counts {source.recorded_trainable}, this code computes {computed}"
            )
    gh, gw = model.view_grid
    tree = source.model_tree
    resampler_parts = parts(model.resampler)
    memory = memory_plans(model, stages, source, gpu_gib, batch_size)
    caches = any(plan["vision_features"]["how"] == "cached" for plan in memory.values())
    shared_features = feature_bytes(model, source.train_images) if caches and source.train_images else 0
    backbones = {
        "vision": {
            "name_or_path": tree["vision_encoder"]["name_or_path"],
            "revision": tree["vision_encoder"].get("revision"),
            "hidden_size": model.vision.hidden_size,
            "patch_size": model.vision.patch_size,
            "blocks": len(model.vision.blocks),
        },
        "llm": {
            "name_or_path": tree["language_model"]["name_or_path"],
            "revision": tree["language_model"].get("revision"),
            "hidden_size": model.llm.get_input_embeddings().embedding_dim,
            "vocab_size": model.llm.get_input_embeddings().num_embeddings,
        },
    }
    counts = module_counts(model)
    return {
        "source": {"kind": source.kind, "label": source.label},
        "resampler_type": model.resampler.type_name,
        "resampler": resampler_record(tree["resampler"], model.resampler.input_dim),  # as in the metadata
        "backbones": backbones,
        "lora": model.lora_config,
        "parameters": counts,
        "resampler_parts": resampler_parts,
        "resampler_repeated": {n: list(r) for n in resampler_parts if (r := repeated(model.resampler, n))},
        "tokens": {
            "num_views": model.num_views,
            "view_grid": [gh, gw],
            "vision_tokens_per_view": gh * gw,
            "tokens_per_view": model.tokens_per_view,
            "tokens_per_image": model.tokens_per_image,
        },
        "stages": stages,
        "memory": memory | {"compute": source.compute},
        "host_memory": host_plan(backbones, counts, shared_features),
        "notes": notes,
    }
