"""The parts of a rebuilt model's metadata, each from the best source there is (runs/reconstruct.py's
precedence): the resampler, projector, overlap head and LoRA from the weights' shapes, checked
against the run's saved config; backbones, views, prompt and data from the saved config or the
eval command line."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from vlm_resampler.data.prompts import DEFAULT_PROMPT
from vlm_resampler.models.lora import trained_whole
from vlm_resampler.resamplers.infer import infer_resampler
from vlm_resampler.resamplers.shape_rules import InferredResampler, ShapeInferenceError, Shapes
from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch
from vlm_resampler.runs.locate import saved_config_path, weight_shapes
from vlm_resampler.runs.provenance import (
    COMMAND_LINE,
    PANORAMA_VLM,
    TOKEN_MLP,
    Provenance,
    UserSettings,
    brief_node,
    format_values,
)

log = logging.getLogger(__name__)

# ---- the resampler ------------------------------------------------------------------------


def check_resampler_node(node: dict, inferred: InferredResampler, shapes: Shapes, where: str) -> None:
    """The saved config's resampler must build exactly the tensors in the weight file."""
    import torch
    from hydra.utils import instantiate

    from vlm_resampler.runs.targets import check_targets

    if node.get("_target_") != inferred.target:
        raise CheckpointMismatch(
            f"{where} says resampler _target_={node.get('_target_')!r}, but the weights are a {inferred.type_name} "
            f"resampler ({inferred.target}; keys {', '.join(sorted(shapes)[:3])}, ...)"
        )
    check_targets(node, "resampler")
    with torch.device("meta"):  # shapes only: nothing is allocated
        built = instantiate(node, _convert_="all")(input_dim=inferred.hparams["input_dim"])
    expected = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    # In the module's own order, so the first lines are the first tensors that differ.
    problems = [
        f"resampler.{k}: {where} builds shape {list(expected[k])}, the weights have {list(shapes[k])}"
        for k in expected
        if k in shapes and expected[k] != shapes[k]
    ]
    problems += [
        f"resampler.{k}: {where} builds it, the weights have no such tensor" for k in expected if k not in shapes
    ]
    problems += [
        f"resampler.{k}: in the weights, but {where} builds no such tensor" for k in sorted(set(shapes) - set(expected))
    ]
    if problems:
        settings = ", ".join(f"{k}={v!r}" for k, v in node.items() if not k.startswith("_"))
        raise CheckpointMismatch(
            f"{where} describes another resampler than the weights hold ({settings}; from the weights: "
            f"{format_values(inferred.hparams)}):\n  " + "\n  ".join(problems[:12])
        )


def check_user_resampler_keys(inferred: InferredResampler, user: dict) -> None:
    import inspect

    from hydra.utils import get_class

    from vlm_resampler.catalog import unknown_resampler_key

    cls = get_class(inferred.target)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "input_dim")]
    for key in user:
        if key not in valid:
            raise ValueError(unknown_resampler_key(key, valid, cls.__name__))


def resampler_node(shapes: Shapes, saved: dict | None, user: UserSettings, prov: Provenance) -> tuple[dict, int]:
    """The resampler's `_target_` node, and its input width (read from the weights)."""
    inferred = infer_resampler(shapes)
    check_user_resampler_keys(inferred, user.resampler)
    prov.inferred["resampler type"] = inferred.type_name
    if saved is not None:
        where = f"{layout.RESOLVED_CONFIG} (model.resampler)"
        node = dict(saved["model"]["resampler"])
        check_resampler_node(node, inferred, shapes, where)
        for key, value in node.items():
            if key.startswith("_"):
                continue
            if key in inferred.hparams:
                prov.inferred[f"resampler.{key}"] = value  # checked against the shapes above
            else:
                prov.saved_config[f"resampler.{key}"] = value
        prov.inferred["resampler.input_dim"] = inferred.hparams["input_dim"]
        return node, inferred.hparams["input_dim"]
    try:
        resolved = inferred.resolve([(COMMAND_LINE, user.resampler)])
    except ShapeInferenceError as err:
        raise ShapeInferenceError(f"no {layout.METADATA} and no {layout.RESOLVED_CONFIG} to record it: {err}") from err
    prov.notes += list(inferred.notes)  # how an inferred value stands for the trained one (e.g. expand)
    for key, value in resolved.kwargs.items():
        prov.record(f"resampler.{key}", value, resolved.origin[key])
    return resolved.config_node(), inferred.hparams["input_dim"]


# ---- the projector and the overlap head ---------------------------------------------------


def token_mlp_node(shapes: Shapes, name: str, with_output: bool) -> dict:
    """A TokenMLP (Linear, GELU, Linear, ...) from its weights: depth, hidden width, output width."""
    linears = sorted(int(m.group(1)) for k in shapes if (m := re.fullmatch(r"layers\.(\d+)\.weight", k)))
    if not linears or linears != [2 * i for i in range(len(linears))]:
        raise ShapeInferenceError(f"{name}: expected TokenMLP weights layers.0/2/4....weight, found {sorted(shapes)}")
    widths = [shapes[f"layers.{i}.weight"] for i in linears]
    hidden = sorted({w[0] for w in widths[:-1]})
    if len(hidden) > 1:
        raise ShapeInferenceError(f"{name}: hidden layers of different widths {hidden}; TokenMLP has one hidden width")
    node = {
        "_target_": TOKEN_MLP,
        "_partial_": True,
        "depth": len(linears),
        "hidden_dim": hidden[0] if hidden else None,
    }
    return node | ({"output_dim": widths[-1][0]} if with_output else {})


# ---- LoRA ---------------------------------------------------------------------------------


def infer_lora(adapter_shapes: Shapes) -> dict:
    """r and target modules from peft's tensor names `...<module>.lora_A.weight` [r, in]; modules
    saved whole (`modules_to_save`) are the ones with plain `...<module>.<param>` tensors."""
    ranks, targets, whole = {}, set(), set()
    for key, shape in adapter_shapes.items():
        m = re.fullmatch(r"(.+)\.lora_A\.weight", key)
        if m:
            ranks[key] = shape[0]
            targets.add(m.group(1).rsplit(".", 1)[-1])
        elif ".lora_" not in key:
            whole.add(key.rsplit(".", 2)[-2])
    if not ranks:
        raise ShapeInferenceError(f"adapter: no `*.lora_A.weight` tensors among {sorted(adapter_shapes)[:4]}")
    distinct = sorted(set(ranks.values()))
    if len(distinct) != 1:
        raise ShapeInferenceError(
            f"adapter: LoRA ranks differ between modules {distinct}; one r per adapter is supported"
        )
    return {
        "r": distinct[0],
        "target_modules": sorted(targets),
        "modules_to_save": sorted(whole),
        "example": next(iter(ranks)),
    }


def saved_lora(saved: dict, stage: str) -> dict | None:
    """The LoRA the run's config gives this stage: attached by the first stage with one, kept after."""
    stages = list(saved.get("stages") or [])
    upto = stages[: stages.index(stage) + 1] if stage in stages else []
    candidates = [saved["model"].get("lora")] + [saved.get("stage", {}).get(s, {}).get("lora") for s in upto]
    return next((c for c in candidates if c), None)


def lora_tree(stage_dir: Path, saved: dict | None, user: UserSettings, prov: Provenance) -> dict | None:
    adapter = stage_dir / layout.ADAPTER_DIR / layout.ADAPTER_WEIGHTS
    recorded = saved_lora(saved, stage_dir.name) if saved else None
    if not adapter.is_file():
        if recorded:
            raise CheckpointMismatch(
                f"{saved_config_path(stage_dir)} gives stage {stage_dir.name} a LoRA ({recorded}), but {adapter} is missing"
            )
        return None
    found = infer_lora(weight_shapes(adapter))
    prov.inferred |= {
        "lora.r": found["r"],
        "lora.target_modules": found["target_modules"],
        "lora.modules_to_save": found["modules_to_save"],
    }
    if recorded:
        where = f"{layout.RESOLVED_CONFIG} (stage.{stage_dir.name}.lora)"
        recorded_whole = sorted(trained_whole(recorded))
        if (
            int(recorded["r"]) != found["r"]
            or sorted(recorded["target_modules"]) != found["target_modules"]
            or recorded_whole != found["modules_to_save"]
        ):
            raise CheckpointMismatch(
                f"{adapter}: {found['example']} has r={found['r']}, the adapter targets {found['target_modules']} and "
                f"saves {found['modules_to_save']} whole, but {where} says r={recorded['r']}, "
                f"target_modules={sorted(recorded['target_modules'])}, modules_to_save={recorded_whole}"
            )
        prov.saved_config |= {"lora.alpha": recorded["alpha"], "lora.dropout": recorded["dropout"]}
        return dict(recorded)
    if "alpha" not in user.lora:
        raise ShapeInferenceError(
            f"{adapter}: LoRA alpha is not recorded (no {layout.METADATA}, no {layout.RESOLVED_CONFIG}) and no shape "
            f"reveals it, yet it scales the adapter's output (alpha / r, r={found['r']}); pass model.lora.alpha=... "
            "on the eval command line"
        )
    prov.command_line["lora.alpha"] = user.lora["alpha"]
    prov.assumed["lora.dropout"] = "0.0: no effect at inference (dropout is inactive in eval mode)"
    return {
        "r": found["r"],
        "alpha": user.lora["alpha"],
        "dropout": 0.0,
        "target_modules": found["target_modules"],
        "modules_to_save": found["modules_to_save"],
    }


# ---- the rest of the model ----------------------------------------------------------------

# Parts of the model tree that come from the weights, and where the others come from on the
# command line: the backbones from `backbone`, the views from `view`, any other part of
# PanoramaVLM (one added later, too) from the group of its own name.
INFERRED_PARTS = ("resampler", "projector", "overlap_head", "lora")
BACKBONE_PARTS = ("vision_encoder", "language_model")
GROUP_OF_PART = {"views": "view"}


def command_line_parts() -> list[tuple[str, str]]:
    """(model part, group) for every required PanoramaVLM argument that no weight describes."""
    import inspect

    from vlm_resampler.models.vlm import PanoramaVLM

    params = inspect.signature(PanoramaVLM.__init__).parameters.values()
    return [
        (p.name, GROUP_OF_PART.get(p.name, p.name))
        for p in params
        if p.name not in ("self", *INFERRED_PARTS, *BACKBONE_PARTS) and p.default is inspect.Parameter.empty
    ]


def required_groups() -> list[str]:
    """The groups the eval command line must choose for a checkpoint with neither metadata nor saved config."""
    return ["backbone"] + [group for _, group in command_line_parts()]


def user_parts(user: UserSettings) -> dict:
    """The model tree's backbones, views and other non-inferred parts, from the chosen groups."""
    missing = [g for g in required_groups() if g not in user.groups]
    if missing:
        raise ShapeInferenceError(
            "which " + ", ".join(missing) + " the checkpoint was trained with is in no weight, and neither "
            f"{layout.METADATA} nor {layout.RESOLVED_CONFIG} is there to say; choose "
            + " ".join(f"{g}=<option>" for g in missing)
            + " on the eval command line"
        )
    backbone = user.groups["backbone"]
    absent = [k for k in (*BACKBONE_PARTS, "tokenizer") if k not in backbone]
    if absent:
        raise ValueError(
            f"backbone: the chosen option has no {', '.join(absent)}; expected a conf/backbone/<option>.yaml tree"
        )
    parts = {key: backbone[key] for key in BACKBONE_PARTS}
    for part, group in command_line_parts():
        if "_target_" not in user.groups[group]:
            raise ValueError(f"{group}: the chosen option has no _target_; expected a conf/{group}/<option>.yaml tree")
        parts[part] = user.groups[group]
    return parts


def run_settings(stage_dir: Path, saved: dict | None, user: UserSettings, prov: Provenance) -> dict:
    """Model parts no weight describes, tokenizer, prompt, data and seed: the saved config's, else the command line's."""
    if saved is not None:
        model = saved["model"]
        parts = {k: v for k, v in model.items() if k not in INFERRED_PARTS}
        prov.saved_parts += [k for k in parts if not k.startswith("_")] + ["tokenizer", "prompt", "data", "seed"]
        stages = list(saved.get("stages") or [])
        index = stages.index(stage_dir.name) if stage_dir.name in stages else None
        init_from = (
            None
            if index is None
            else (saved.get("init_from") if index == 0 else str(stage_dir.parent / stages[index - 1]))
        )
        return {
            "parts": parts,
            "tokenizer": saved["backbone"]["tokenizer"],
            "prompt": saved["prompt"],
            "data": saved["data"],
            "seed": int(saved.get("seed", 0)),
            "init_from": init_from,
        }
    parts = user_parts(user)
    prov.command_line |= {
        part: node["name_or_path"] if part in BACKBONE_PARTS else brief_node(node) for part, node in parts.items()
    }
    parts["_target_"] = PANORAMA_VLM
    prompt = dict(user.prompt)
    if {"system_prompt", "user_template"} <= set(prompt):
        prov.command_line["prompt"] = prompt
    else:
        prompt = DEFAULT_PROMPT | prompt
        prov.assumed["prompt"] = (
            f"{prompt!r}: the project's default prompt (data/prompts.py), not a record of training; it changes "
            "outputs: pass prompt.system_prompt=... prompt.user_template=... if training used another"
        )
    prov.assumed["seed"] = "0: only the untrained baseline's fresh weights depend on it"
    return {
        "parts": parts,
        "tokenizer": user.groups["backbone"]["tokenizer"],
        "prompt": prompt,
        "data": None,
        "seed": 0,
        "init_from": None,
    }
