"""Rebuilding from a guide-format checkpoint_metadata.json (vlm_resampler.runs.guide_metadata): its
stated values first, checked against the weights; the run's saved config and the command line
only for what it leaves out (runs/reconstruct.py's precedence)."""

from __future__ import annotations

import logging
from pathlib import Path

from vlm_resampler.catalog import conf_options
from vlm_resampler.ranges import OutOfRange
from vlm_resampler.resamplers.infer import infer_resampler
from vlm_resampler.resamplers.shape_rules import ShapeInferenceError, Shapes
from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch
from vlm_resampler.runs.guide_metadata import (
    GUIDE_FORMAT,
    GuideMetadata,
    backbone_choices,
    backbone_option,
    check_resampler_keys,
    resampler_arguments,
    resolve_view,
    view_notes,
    view_option,
)
from vlm_resampler.runs.provenance import COMMAND_LINE, Provenance, UserSettings, brief_node, format_values
from vlm_resampler.runs.reconstruct_parts import (
    BACKBONE_PARTS,
    check_resampler_node,
    check_user_resampler_keys,
    lora_tree,
    required_groups,
    run_settings,
)

log = logging.getLogger(__name__)

# ---- a guide-format checkpoint_metadata.json ---------------------------------------------------


def guide_resampler_node(
    shapes: Shapes, guide: GuideMetadata, saved: dict | None, user: UserSettings, prov: Provenance
) -> tuple[dict, int]:
    """The file's resampler values first, then the weight shapes, the saved config and the command
    line. Every value the file states is used as stated, so it must build exactly the weights."""
    inferred = infer_resampler(shapes)
    prov.inferred["resampler type"] = inferred.type_name
    if guide.resampler_type not in (None, inferred.type_name):
        raise CheckpointMismatch(
            f"{guide.path}: model_config.resampler_type={guide.resampler_type!r}, but the weights are a "
            f"{inferred.type_name} resampler ({inferred.target}; keys {', '.join(sorted(shapes)[:3])}, ...)"
        )
    check_resampler_keys(guide, *resampler_arguments(inferred.target))
    check_user_resampler_keys(inferred, user.resampler)
    width = inferred.hparams["input_dim"]
    if guide.input_dim not in (None, width):
        raise CheckpointMismatch(
            f"{guide.path}: model_config.resampler_config.input_dim={guide.input_dim}, but the resampler weights take "
            f"{width}-wide inputs: the input width is always the vision encoder's"
        )
    sources = [(GUIDE_FORMAT, guide.resampler)]
    if saved is not None:
        sources.append((f"{layout.RESOLVED_CONFIG} (model.resampler)", saved["model"]["resampler"]))
    sources.append((COMMAND_LINE, user.resampler))
    try:
        resolved = inferred.resolve(sources)
    except OutOfRange as err:  # a stated head count that the width fixed by the weights does not allow
        raise CheckpointMismatch(
            f"a stated resampler value does not fit the weights ({guide.path} first): {err}"
        ) from err
    # The file's own values, not the inferred stand-ins (expand): checked against every tensor here.
    node = resolved.config_node() | guide.resampler
    try:
        check_resampler_node(node, inferred, shapes, GUIDE_FORMAT)
    except CheckpointMismatch as err:
        raise CheckpointMismatch(f"{guide.path}: {err}") from err
    if guide.resampler_type is not None:
        prov.guide["resampler type"] = guide.resampler_type
    for key, value in resolved.kwargs.items():
        if key in guide.resampler or (key == "input_dim" and guide.input_dim is not None):
            prov.guide[f"resampler.{key}"] = node.get(key, value)
        else:
            prov.record(f"resampler.{key}", value, resolved.origin[key])
    # How an inferred value stands for the trained one: moot where the file states the value.
    prov.notes += [note for note in inferred.notes if note.split(":", 1)[0] not in guide.resampler]
    return node, width


def _backbone_pair(backbone: dict) -> tuple[str, str]:
    return backbone["vision_encoder"]["name_or_path"], backbone["language_model"]["name_or_path"]


def guide_backbone(guide: GuideMetadata, other: dict | None, other_label: str, prov: Provenance) -> tuple[dict, bool]:
    """The conf/backbone option with the file's two backbone names, else `other` (the saved config's
    or the command line's); True when the file's."""
    named = f"vision_name={guide.vision_name!r}, language_model_name={guide.language_model_name!r}"
    match = backbone_option(guide)
    if match is not None:
        name, backbone = match
        prov.guide["backbone"] = f"{name} ({named})"
        if other is not None and _backbone_pair(other) != _backbone_pair(backbone):
            prov.notes.append(
                f"ignored the backbone of {other_label} ({' + '.join(_backbone_pair(other))}): "
                f"{guide.path} names {named}, which is backbone={name}"
            )
        return backbone, True
    if other is None:
        raise ShapeInferenceError(
            f"{guide.path} names {named}, and no conf/backbone option has these two ({backbone_choices()}); choose "
            "backbone=<option> on the eval command line (or add a conf/backbone/<name>.yaml with these names)"
        )
    prov.notes.append(
        f"{guide.path} names {named}, which no conf/backbone option has: the backbone of {other_label} "
        f"({' + '.join(_backbone_pair(other))}) is used in their place"
    )
    return other, False


def guide_view(
    guide: GuideMetadata, other: dict | None, other_label: str, backbone: dict, prov: Provenance
) -> tuple[dict, bool]:
    """The conf/view option the file's crop_strategy names (with its fov_deg and overlap), else
    `other`; its size follows the backbone used. True when the file's."""
    if guide.image_size is not None and guide.image_size != backbone.get("image_size"):
        # The encoder's input size is the backbone's: views cut at another size would not fit it.
        prov.notes.append(
            f"{guide.path}: model_config.image_size={guide.image_size}, but the backbone used takes "
            f"{backbone.get('image_size')}: views are cut at {backbone.get('image_size')}"
        )
    chosen = view_option(guide)
    if chosen is not None:
        name, view, taken = chosen
        prov.guide["view"] = f"{name}({format_values(taken)})" if taken else name
        prov.notes += view_notes(guide, name, taken)
        if other is not None and other.get("_target_") != view.get("_target_"):
            prov.notes.append(
                f"ignored the view of {other_label} ({brief_node(other)}): {guide.path} says "
                f"training_config.crop_strategy={name!r}"
            )
        return resolve_view(view, backbone), True
    said = (
        f"training_config.crop_strategy={guide.crop_strategy!r} is none of our view options ({', '.join(conf_options('view'))})"
        if guide.crop_strategy
        else "no training_config.crop_strategy"
    )
    if other is None:
        raise ShapeInferenceError(f"{guide.path}: {said}; choose view=<option> on the eval command line")
    prov.notes.append(f"{guide.path}: {said}: the view of {other_label} is used")
    return resolve_view(other, backbone), False


def guide_run_settings(
    stage_dir: Path, guide: GuideMetadata, saved: dict | None, user: UserSettings, prov: Provenance
) -> dict:
    """run_settings, with the file's backbone and views ahead of the saved config's and the command line's."""
    if saved is not None:
        other_label, others = layout.RESOLVED_CONFIG, {"backbone": saved["backbone"], "view": saved["model"]["views"]}
    else:
        other_label, others = "the eval command line", user.groups
    backbone, backbone_from_guide = guide_backbone(guide, others.get("backbone"), other_label, prov)
    view, view_from_guide = guide_view(guide, others.get("view"), other_label, backbone, prov)
    from_guide = [*BACKBONE_PARTS] * backbone_from_guide + ["views"] * view_from_guide
    chosen = UserSettings(user.resampler, user.lora, user.groups | {"backbone": backbone, "view": view}, user.prompt)
    missing = [group for group in required_groups() if group not in chosen.groups]
    if saved is None and missing:
        raise ShapeInferenceError(
            f"{guide.path} is in the earlier system's (guide) format, which does not say which {', '.join(missing)} the "
            "checkpoint was trained with (nor does any weight); choose "
            + " ".join(f"{g}=<option>" for g in missing)
            + " on the eval command line"
        )
    settings = run_settings(stage_dir, saved, chosen, prov)
    if saved is not None:  # the saved config's parts, but the file's where it names them
        settings["parts"] |= {
            "vision_encoder": backbone["vision_encoder"],
            "language_model": backbone["language_model"],
            "views": view,
        }
        settings["tokenizer"] = backbone["tokenizer"]
        replaced = from_guide + ["tokenizer"] * backbone_from_guide
        prov.saved_parts[:] = [part for part in prov.saved_parts if part not in replaced]
    for part in from_guide:  # recorded above as the file's
        prov.command_line.pop(part, None)
    return settings


def guide_lora(
    stage_dir: Path, guide: GuideMetadata, saved: dict | None, user: UserSettings, prov: Provenance
) -> dict | None:
    """LoRA as without metadata, but the file's use_lora and rank checked against the adapter and
    its alpha used (no shape reveals alpha)."""
    adapter = stage_dir / layout.ADAPTER_DIR / layout.ADAPTER_WEIGHTS
    stated = guide.lora
    if stated.get("use") is not None and stated["use"] != adapter.is_file():
        has = "holds a LoRA adapter" if adapter.is_file() else "is missing"
        raise CheckpointMismatch(
            f"{guide.path}: training_config.use_lora={str(stated['use']).lower()}, but {adapter} {has}"
        )
    if "alpha" in stated:
        user = UserSettings(user.resampler, user.lora | {"alpha": stated["alpha"]}, user.groups, user.prompt)
    tree = lora_tree(stage_dir, saved, user, prov)
    if tree is None:
        return None
    if "r" in stated:
        if stated["r"] != tree["r"]:
            raise CheckpointMismatch(
                f"{adapter}: the adapter has LoRA rank r={tree['r']}, but {guide.path} says "
                f"training_config.lora_rank={stated['r']}"
            )
        prov.guide["lora.r"] = prov.inferred.pop("lora.r")
    if "alpha" in stated:
        tree["alpha"] = stated["alpha"]
        prov.command_line.pop("lora.alpha", None)
        prov.saved_config.pop("lora.alpha", None)
        prov.guide["lora.alpha"] = stated["alpha"]
    return tree
