"""The metadata of a stage directory whose checkpoint_metadata.json is gone, or is in the earlier
system's ("guide") format, rebuilt from what is left.

Precedence (DESIGN.md, "Precedence when rebuilding a model"):
1. checkpoint_metadata.json: ours is used as it is (nothing here runs). One in the guide's format
   (vlm_resampler.runs.guide_metadata) is the first source here: every value it states is used,
   and those that shape a tensor (resampler type and sizes, LoRA rank) must build exactly the
   weights; its backbone names pick the conf/backbone option, its crop_strategy the conf/view one
   (a `backbone=` or `view=` on the command line that contradicts them is reported and ignored);
2. weight shapes: the resampler type (from parameter names) and every hyperparameter that
   shapes a tensor (vlm_resampler.resamplers.infer), the projector and overlap head widths,
   the LoRA rank and target modules (from the adapter's tensor names and shapes);
3. the run's saved config (`../resolved_config.yaml`, written before any stage ran): backbones,
   views, prompt, data, seed and the values no shape reveals (norm_first, attention heads,
   LoRA alpha). Its resampler is checked against the weights first: a disagreement is an error
   naming the tensor and both shapes;
4. the eval command line, only for what neither tells: `resampler.<key>=...` for a resampler
   value no shape reveals, `model.lora.alpha=...`, and, when there is no saved config either,
   the `backbone=...` and `view=...` groups unless a guide-format file names them (which
   backbone and which views are not in any weight; likewise the group of any other model part
   no weight describes, e.g. `stitch=...`). The prompt then
   is `prompt.*` from the command line, else the default prompt of the current
   conf/train.yaml, reported as an assumption (it has no group to choose).
Values that have no effect at inference (dropout) are assumed and reported as such; any other
missing value is an error that names it and says how to supply it.

Everything used is recorded under the metadata's "reconstructed" key for the log.
"""

from __future__ import annotations

from pathlib import Path

from vlm_resampler.resamplers.shape_rules import ShapeInferenceError
from vlm_resampler.runs import layout
from vlm_resampler.runs.guide_metadata import (
    GuideMetadata,
)
from vlm_resampler.runs.locate import (
    check_stage_completed,
    read_saved_config,
    saved_config_path,
    split_modules,
    weight_shapes,
)
from vlm_resampler.runs.metadata import resampler_record
from vlm_resampler.runs.provenance import RECONSTRUCTED, Provenance, UserSettings, brief_node
from vlm_resampler.runs.reconstruct_guide import guide_lora, guide_resampler_node, guide_run_settings
from vlm_resampler.runs.reconstruct_parts import lora_tree, resampler_node, run_settings, token_mlp_node


def reconstruct_metadata(stage_dir: Path, user: UserSettings | None = None, guide: GuideMetadata | None = None) -> dict:
    """Metadata for a weights-only stage dir, or one whose checkpoint_metadata.json is `guide`
    (in the guide's format), in checkpoint_metadata.json's layout (see module doc)."""
    stage_dir, user = Path(stage_dir), user or UserSettings()
    check_stage_completed(stage_dir)
    modules = split_modules(weight_shapes(stage_dir / layout.WEIGHTS))
    for name in ("resampler", "projector", "overlap_head"):
        if name not in modules:
            raise ShapeInferenceError(
                f"{stage_dir / layout.WEIGHTS}: no {name}.* tensors (found modules {sorted(modules)})"
            )
    saved, prov = read_saved_config(stage_dir), Provenance()
    if guide is None:
        resampler, input_dim = resampler_node(modules["resampler"], saved, user, prov)
        settings = run_settings(stage_dir, saved, user, prov)
        lora = lora_tree(stage_dir, saved, user, prov)
    else:
        resampler, input_dim = guide_resampler_node(modules["resampler"], guide, saved, user, prov)
        settings = guide_run_settings(stage_dir, guide, saved, user, prov)
        lora = guide_lora(stage_dir, guide, saved, user, prov)
        prov.notes += guide.notes
    if saved is not None:
        # Their shapes are checked by the strict load.
        projector, overlap_head = saved["model"]["projector"], saved["model"]["overlap_head"]
        prov.saved_parts += ["projector", "overlap_head"]
    else:
        projector = token_mlp_node(modules["projector"], "projector", with_output=False)
        overlap_head = token_mlp_node(modules["overlap_head"], "overlap_head", with_output=True)
        prov.inferred |= {"projector": brief_node(projector), "overlap_head": brief_node(overlap_head)}
    model = settings["parts"] | {
        "resampler": resampler,
        "projector": projector,
        "overlap_head": overlap_head,
        "lora": lora,
    }
    return {
        "format_version": None,  # there was no metadata file of ours
        "stage": stage_dir.name,
        "seed": settings["seed"],
        "resampler_type": prov.inferred["resampler type"],
        "resampler": resampler_record(resampler, input_dim),
        "model": model,
        "backbones": {
            role: {
                "name_or_path": model[key]["name_or_path"],
                "revision": model[key].get("revision"),
                "fingerprint": None,
            }
            for role, key in (("vision", "vision_encoder"), ("llm", "language_model"))
        },
        "tokenizer": settings["tokenizer"],
        "prompt": settings["prompt"],
        "data": settings["data"],
        "init_from": settings["init_from"],
        "saved_modules": list(modules),
        "weights_sha256": {},  # recorded only in the metadata: nothing to verify against
        RECONSTRUCTED: {
            "guide_metadata": str(guide.path) if guide is not None else None,
            "guide_values": prov.guide,
            "saved_config": str(saved_config_path(stage_dir)) if saved is not None else None,
            "inferred": prov.inferred,
            "saved_config_values": prov.saved_config,
            "saved_config_parts": prov.saved_parts,
            "command_line": prov.command_line,
            "assumed": prov.assumed,
            "notes": prov.notes,
        },
    }
