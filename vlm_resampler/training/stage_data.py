"""What a stage trains on: its dataset and collator, the frozen tower's cached features, and the
object-code target where it applies."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from vlm_resampler.data.collate import CaptionCollator, panorama_only
from vlm_resampler.data.datasets import CaptionExamples, Panoramas, training_items
from vlm_resampler.data.prompts import PromptFormat
from vlm_resampler.training import distributed


def stage_dataset(cfg: dict, model, stage):
    """(dataset, collator, code target or None) for `stage` of the run config `cfg`."""
    data = OmegaConf.create(cfg["data"])
    items = training_items(data)
    width, height = int(data.erp_width), int(data.erp_height)
    features = stage_features(model, stage, items, width, height)
    code_target, facts = object_code_target(model, stage, data, cfg["model"]["language_model"])
    if stage.objective == "overlap_vicreg":
        return Panoramas(items, width, height, features), panorama_only, code_target
    from vlm_resampler.models.backbones import load_tokenizer

    tokenizer_cfg = cfg["backbone"]["tokenizer"]
    tokenizer = load_tokenizer(tokenizer_cfg["name_or_path"], tokenizer_cfg["revision"])
    collator = CaptionCollator(tokenizer, PromptFormat(**cfg["prompt"]), int(data.max_answer_tokens))
    return CaptionExamples(items, width, height, features, facts), collator, code_target


def stage_features(model, stage, items: list[dict], width: int, height: int):
    """The frozen vision tower's features of every training image (training/feature_cache.py), or
    None when the stage trains the tower or does not cache."""
    # .get: a run dir written before these keys existed resumes as it started (no cache, no target)
    if not stage.get("cache_vision_features", False) or int(stage.vision_trainable_blocks) != 0:
        return None
    from vlm_resampler.training.feature_cache import cached_features, tower_fingerprint

    table = cached_features(model, tower_fingerprint(model.vision), [str(i["image"]) for i in items], width, height)
    if table is not None and distributed.is_main_process():
        print(f"stage {stage.name}: vision features of {len(table.index)} images {table.source}", flush=True)
    return table


def object_code_target(model, stage, data, language_model: dict):
    """(CodeTarget, image -> object facts) when stage.<name>.object_code_weight > 0 and it can
    apply: the data has object annotations (SynthPano) and the LLM was pretrained on object codes
    (backbone=tiny_reader). Otherwise (None, None), and a line says why the target is off."""
    weight = float(stage.get("object_code_weight", 0.0))
    if not weight > 0:
        return None, None
    from vlm_resampler.data.datasets import synthpano_root
    from vlm_resampler.data.object_facts import facts_by_image
    from vlm_resampler.models.backbones import resolve_backbone
    from vlm_resampler.models.object_codes import ObjectCodes, has_object_codes
    from vlm_resampler.training.trainer import CodeTarget

    llm_dir = resolve_backbone(language_model["name_or_path"], language_model.get("revision"))
    off = None
    if data.name != "synthpano":
        off = f"data={data.name} has no object annotations"
    elif not has_object_codes(llm_dir):
        off = f"the language model {language_model['name_or_path']} was not pretrained on object codes"
    if off:
        if distributed.is_main_process():
            print(
                f"stage {stage.name}: object-code target off (object_code_weight={weight} not applied): {off}",
                flush=True,
            )
        return None, None
    codes = ObjectCodes.load(Path(llm_dir))
    yaws = [m.yaw_deg for m in model.views.metadata()]
    if distributed.is_main_process():
        print(
            f"stage {stage.name}: visual tokens also regressed onto the LLM's object codes (weight {weight})",
            flush=True,
        )
    return CodeTarget(model, codes), facts_by_image(synthpano_root(data), "train", yaws)
