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

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_resampler.models.lora import trained_whole
from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch
from vlm_resampler.runs.guide_metadata import (
    GUIDE_FORMAT, GuideMetadata, backbone_choices, backbone_option, check_resampler_keys, conf_options, resampler_arguments,
    resolve_view, view_notes, view_option,
)
from vlm_resampler.resamplers.infer import InferredResampler, ShapeInferenceError, Shapes, infer_resampler

log = logging.getLogger(__name__)

RECONSTRUCTED = "reconstructed"
COMMAND_LINE = "the eval command line"
TOKEN_MLP = "vlm_resampler.models.projector.TokenMLP"
PANORAMA_VLM = "vlm_resampler.models.vlm.PanoramaVLM"


@dataclass
class UserSettings:
    """Model settings given on the eval command line (explicit overrides only, not group defaults)."""

    resampler: dict[str, Any] = field(default_factory=dict)  # resampler.<key>=value
    lora: dict[str, Any] = field(default_factory=dict)  # model.lora.<key>=value
    groups: dict[str, dict] = field(default_factory=dict)  # chosen groups (backbone, view, ...), resolved
    prompt: dict[str, Any] = field(default_factory=dict)  # prompt.<key>=value


@dataclass
class Provenance:
    guide: dict[str, Any] = field(default_factory=dict)  # stated by a guide-format checkpoint_metadata.json
    inferred: dict[str, Any] = field(default_factory=dict)
    saved_config: dict[str, Any] = field(default_factory=dict)
    saved_parts: list[str] = field(default_factory=list)  # whole parts of the model taken from the saved config
    command_line: dict[str, Any] = field(default_factory=dict)
    assumed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self, key: str, value: Any, origin: str) -> None:
        """File a value under the origin text that InferredResampler.resolve gave it."""
        if origin == COMMAND_LINE:
            self.command_line[key] = value
        elif origin == GUIDE_FORMAT:
            self.guide[key] = value
        elif origin.startswith(layout.RESOLVED_CONFIG):
            self.saved_config[key] = value
        elif origin.startswith("assumed "):
            self.assumed[key] = origin[len("assumed "):]
        else:  # inferred, or derived from inferred shapes and a supplied value
            self.inferred[key] = value


# ---- where a checkpoint is ----------------------------------------------------------------

def has_metadata(stage_dir: Path) -> bool:
    return layout.is_stage_dir(stage_dir)


def is_weights_only_stage_dir(path: Path) -> bool:
    path = Path(path)
    return (path.is_dir() and not (path / layout.METADATA).is_file() and (path / layout.WEIGHTS).is_file()
            and not save_unfinished(path))


def save_unfinished(stage_dir: Path) -> bool:
    return (Path(stage_dir) / layout.SAVING).exists()


def resolve_checkpoint_dir(path: Path | str) -> Path:
    """A stage dir (with metadata, or with weights only), or a run dir's last completed stage,
    where a stage whose metadata is gone counts as completed when the run's status.json says so."""
    path = Path(path)
    if save_unfinished(path):
        raise layout.NoCheckpointError(
            f"{path}: a save into it did not finish (it holds {layout.SAVING}: the process stopped while replacing "
            "its checkpoint), so it holds no checkpoint; train that stage again"
        )
    if is_weights_only_stage_dir(path):
        return path
    if layout.is_run_dir(path) and not layout.is_stage_dir(path):
        done = [s for s in layout.STAGE_NAMES if has_metadata(path / s) or (is_weights_only_stage_dir(path / s) and completed(path, s))]
        if done and not has_metadata(path / done[-1]):
            log.warning("%s: its last completed stage, %s, has no %s; it is rebuilt from its weights",
                        path, done[-1], layout.METADATA)
            return path / done[-1]
        for name in layout.STAGE_NAMES:
            if is_weights_only_stage_dir(path / name) and name not in done:
                # Not taken: it may be an interrupted save.
                log.warning("%s has %s but no %s, and the run's %s does not list it as completed; not evaluated",
                            path / name, layout.WEIGHTS, layout.METADATA, layout.STATUS)
    return layout.resolve_stage_dir(path)


def completed(run_dir: Path, stage: str) -> bool:
    status = Path(run_dir) / layout.STATUS
    return status.is_file() and stage in json.loads(status.read_text(encoding="utf-8")).get("completed", [])


def saved_config_path(stage_dir: Path) -> Path:
    return Path(stage_dir).parent / layout.RESOLVED_CONFIG


def read_saved_config(stage_dir: Path) -> dict | None:
    path = saved_config_path(stage_dir)
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    for key in ("model", "backbone", "prompt", "data"):
        if not isinstance(cfg.get(key), dict):
            raise ValueError(f"{path}: no `{key}:` section; it is not a resolved run config")
    return cfg


def backbone_names(stage_dir: Path, backbone_group: dict | None) -> list[str]:
    """The backbone names a weights-only checkpoint will load (for hub configuration)."""
    saved = read_saved_config(stage_dir)
    model = saved["model"] if saved else (backbone_group or {})
    return [model[k]["name_or_path"] for k in ("vision_encoder", "language_model") if isinstance(model.get(k), dict)]


def weight_shapes(path: Path) -> Shapes:
    """Tensor shapes from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def split_modules(shapes: Shapes) -> dict[str, Shapes]:
    modules: dict[str, Shapes] = {}
    for key, shape in shapes.items():
        head, _, rest = key.partition(".")
        modules.setdefault(head, {})[rest] = shape
    return modules


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
    problems = [f"resampler.{k}: {where} builds shape {list(expected[k])}, the weights have {list(shapes[k])}"
                for k in expected if k in shapes and expected[k] != shapes[k]]
    problems += [f"resampler.{k}: {where} builds it, the weights have no such tensor" for k in expected if k not in shapes]
    problems += [f"resampler.{k}: in the weights, but {where} builds no such tensor" for k in sorted(set(shapes) - set(expected))]
    if problems:
        settings = ", ".join(f"{k}={v!r}" for k, v in node.items() if not k.startswith("_"))
        raise CheckpointMismatch(
            f"{where} describes another resampler than the weights hold ({settings}; from the weights: "
            f"{_format(inferred.hparams)}):\n  " + "\n  ".join(problems[:12])
        )


def check_user_resampler_keys(inferred: InferredResampler, user: dict) -> None:
    import inspect

    from hydra.utils import get_class

    from vlm_resampler.config.validate import unknown_resampler_key

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
    node = {"_target_": TOKEN_MLP, "_partial_": True, "depth": len(linears), "hidden_dim": hidden[0] if hidden else None}
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
        raise ShapeInferenceError(f"adapter: LoRA ranks differ between modules {distinct}; one r per adapter is supported")
    return {"r": distinct[0], "target_modules": sorted(targets), "modules_to_save": sorted(whole), "example": next(iter(ranks))}


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
            raise CheckpointMismatch(f"{saved_config_path(stage_dir)} gives stage {stage_dir.name} a LoRA ({recorded}), but {adapter} is missing")
        return None
    found = infer_lora(weight_shapes(adapter))
    prov.inferred |= {
        "lora.r": found["r"], "lora.target_modules": found["target_modules"], "lora.modules_to_save": found["modules_to_save"]
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
        "r": found["r"], "alpha": user.lora["alpha"], "dropout": 0.0,
        "target_modules": found["target_modules"], "modules_to_save": found["modules_to_save"],
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
    return [(p.name, GROUP_OF_PART.get(p.name, p.name)) for p in params
            if p.name not in ("self", *INFERRED_PARTS, *BACKBONE_PARTS) and p.default is inspect.Parameter.empty]


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
            + " ".join(f"{g}=<option>" for g in missing) + " on the eval command line"
        )
    backbone = user.groups["backbone"]
    absent = [k for k in (*BACKBONE_PARTS, "tokenizer") if k not in backbone]
    if absent:
        raise ValueError(f"backbone: the chosen option has no {', '.join(absent)}; expected a conf/backbone/<option>.yaml tree")
    parts = {key: backbone[key] for key in BACKBONE_PARTS}
    for part, group in command_line_parts():
        if "_target_" not in user.groups[group]:
            raise ValueError(f"{group}: the chosen option has no _target_; expected a conf/{group}/<option>.yaml tree")
        parts[part] = user.groups[group]
    return parts


def default_prompt() -> dict:
    """conf/train.yaml's prompt block (read directly: this may run inside a Hydra app, which cannot compose again)."""
    from omegaconf import OmegaConf

    from vlm_resampler.config.validate import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml").prompt, resolve=True)


def run_settings(stage_dir: Path, saved: dict | None, user: UserSettings, prov: Provenance) -> dict:
    """Model parts no weight describes, tokenizer, prompt, data and seed: the saved config's, else the command line's."""
    if saved is not None:
        model = saved["model"]
        parts = {k: v for k, v in model.items() if k not in INFERRED_PARTS}
        prov.saved_parts += [k for k in parts if not k.startswith("_")] + ["tokenizer", "prompt", "data", "seed"]
        stages = list(saved.get("stages") or [])
        index = stages.index(stage_dir.name) if stage_dir.name in stages else None
        init_from = None if index is None else (saved.get("init_from") if index == 0 else str(stage_dir.parent / stages[index - 1]))
        return {"parts": parts, "tokenizer": saved["backbone"]["tokenizer"], "prompt": saved["prompt"], "data": saved["data"],
                "seed": int(saved.get("seed", 0)), "init_from": init_from}
    parts = user_parts(user)
    prov.command_line |= {part: node["name_or_path"] if part in BACKBONE_PARTS else _brief(node) for part, node in parts.items()}
    parts["_target_"] = PANORAMA_VLM
    prompt = dict(user.prompt)
    if {"system_prompt", "user_template"} <= set(prompt):
        prov.command_line["prompt"] = prompt
    else:
        prompt = default_prompt() | prompt
        prov.assumed["prompt"] = (f"{prompt!r}: the current conf/train.yaml default, not a record of training; it changes "
                                  "outputs: pass prompt.system_prompt=... prompt.user_template=... if training used another")
    prov.assumed["seed"] = "0: only the untrained baseline's fresh weights depend on it"
    return {"parts": parts, "tokenizer": user.groups["backbone"]["tokenizer"], "prompt": prompt, "data": None, "seed": 0, "init_from": None}


# ---- a guide-format checkpoint_metadata.json ---------------------------------------------------

def guide_resampler_node(shapes: Shapes, guide: GuideMetadata, saved: dict | None, user: UserSettings,
                         prov: Provenance) -> tuple[dict, int]:
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
    except ShapeInferenceError:
        raise
    except ValueError as err:  # a stated head count that the width fixed by the weights does not allow
        raise CheckpointMismatch(f"a stated resampler value does not fit the weights ({guide.path} first): {err}") from err
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
            prov.notes.append(f"ignored the backbone of {other_label} ({' + '.join(_backbone_pair(other))}): "
                              f"{guide.path} names {named}, which is backbone={name}")
        return backbone, True
    if other is None:
        raise ShapeInferenceError(
            f"{guide.path} names {named}, and no conf/backbone option has these two ({backbone_choices()}); choose "
            "backbone=<option> on the eval command line (or add a conf/backbone/<name>.yaml with these names)"
        )
    prov.notes.append(f"{guide.path} names {named}, which no conf/backbone option has: the backbone of {other_label} "
                      f"({' + '.join(_backbone_pair(other))}) is used in their place")
    return other, False


def guide_view(guide: GuideMetadata, other: dict | None, other_label: str, backbone: dict, prov: Provenance) -> tuple[dict, bool]:
    """The conf/view option the file's crop_strategy names (with its fov_deg and overlap), else
    `other`; its size follows the backbone used. True when the file's."""
    if guide.image_size is not None and guide.image_size != backbone.get("image_size"):
        # The encoder's input size is the backbone's: views cut at another size would not fit it.
        prov.notes.append(f"{guide.path}: model_config.image_size={guide.image_size}, but the backbone used takes "
                          f"{backbone.get('image_size')}: views are cut at {backbone.get('image_size')}")
    chosen = view_option(guide)
    if chosen is not None:
        name, view, taken = chosen
        prov.guide["view"] = f"{name}({_format(taken)})" if taken else name
        prov.notes += view_notes(guide, name, taken)
        if other is not None and other.get("_target_") != view.get("_target_"):
            prov.notes.append(f"ignored the view of {other_label} ({_brief(other)}): {guide.path} says "
                              f"training_config.crop_strategy={name!r}")
        return resolve_view(view, backbone), True
    said = (f"training_config.crop_strategy={guide.crop_strategy!r} is none of our view options ({', '.join(conf_options('view'))})"
            if guide.crop_strategy else "no training_config.crop_strategy")
    if other is None:
        raise ShapeInferenceError(f"{guide.path}: {said}; choose view=<option> on the eval command line")
    prov.notes.append(f"{guide.path}: {said}: the view of {other_label} is used")
    return resolve_view(other, backbone), False


def guide_run_settings(stage_dir: Path, guide: GuideMetadata, saved: dict | None, user: UserSettings, prov: Provenance) -> dict:
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
            "checkpoint was trained with (nor does any weight); choose " + " ".join(f"{g}=<option>" for g in missing)
            + " on the eval command line"
        )
    settings = run_settings(stage_dir, saved, chosen, prov)
    if saved is not None:  # the saved config's parts, but the file's where it names them
        settings["parts"] |= {"vision_encoder": backbone["vision_encoder"], "language_model": backbone["language_model"], "views": view}
        settings["tokenizer"] = backbone["tokenizer"]
        replaced = from_guide + ["tokenizer"] * backbone_from_guide
        prov.saved_parts[:] = [part for part in prov.saved_parts if part not in replaced]
    for part in from_guide:  # recorded above as the file's
        prov.command_line.pop(part, None)
    return settings


def guide_lora(stage_dir: Path, guide: GuideMetadata, saved: dict | None, user: UserSettings, prov: Provenance) -> dict | None:
    """LoRA as without metadata, but the file's use_lora and rank checked against the adapter and
    its alpha used (no shape reveals alpha)."""
    adapter = stage_dir / layout.ADAPTER_DIR / layout.ADAPTER_WEIGHTS
    stated = guide.lora
    if stated.get("use") is not None and stated["use"] != adapter.is_file():
        has = "holds a LoRA adapter" if adapter.is_file() else "is missing"
        raise CheckpointMismatch(f"{guide.path}: training_config.use_lora={str(stated['use']).lower()}, but {adapter} {has}")
    if "alpha" in stated:
        user = UserSettings(user.resampler, user.lora | {"alpha": stated["alpha"]}, user.groups, user.prompt)
    tree = lora_tree(stage_dir, saved, user, prov)
    if tree is None:
        return None
    if "r" in stated:
        if stated["r"] != tree["r"]:
            raise CheckpointMismatch(f"{adapter}: the adapter has LoRA rank r={tree['r']}, but {guide.path} says "
                                     f"training_config.lora_rank={stated['r']}")
        prov.guide["lora.r"] = prov.inferred.pop("lora.r")
    if "alpha" in stated:
        tree["alpha"] = stated["alpha"]
        prov.command_line.pop("lora.alpha", None)
        prov.saved_config.pop("lora.alpha", None)
        prov.guide["lora.alpha"] = stated["alpha"]
    return tree


def reconstruct_metadata(stage_dir: Path, user: UserSettings | None = None, guide: GuideMetadata | None = None) -> dict:
    """Metadata for a weights-only stage dir, or one whose checkpoint_metadata.json is `guide`
    (in the guide's format), in checkpoint_metadata.json's layout (see module doc)."""
    stage_dir, user = Path(stage_dir), user or UserSettings()
    check_stage_completed(stage_dir)
    modules = split_modules(weight_shapes(stage_dir / layout.WEIGHTS))
    for name in ("resampler", "projector", "overlap_head"):
        if name not in modules:
            raise ShapeInferenceError(f"{stage_dir / layout.WEIGHTS}: no {name}.* tensors (found modules {sorted(modules)})")
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
        prov.inferred |= {"projector": _brief(projector), "overlap_head": _brief(overlap_head)}
    model = settings["parts"] | {"resampler": resampler, "projector": projector, "overlap_head": overlap_head,
                                 "lora": lora}
    return {
        "format_version": None,  # there was no metadata file of ours
        "stage": stage_dir.name,
        "seed": settings["seed"],
        "resampler_type": prov.inferred["resampler type"],
        "resampler": {k: v for k, v in resampler.items() if k != "_partial_"} | {"input_dim": input_dim},
        "model": model,
        "backbones": {role: {"name_or_path": model[key]["name_or_path"], "revision": model[key].get("revision"), "fingerprint": None}
                      for role, key in (("vision", "vision_encoder"), ("llm", "language_model"))},
        "tokenizer": settings["tokenizer"],
        "prompt": settings["prompt"],
        "data": settings["data"],
        "init_from": settings["init_from"],
        "saved_modules": list(modules),
        "weights_sha256": {},  # recorded only in the metadata: nothing to verify against
        RECONSTRUCTED: {
            "guide_metadata": str(guide.path) if guide is not None else None, "guide_values": prov.guide,
            "saved_config": str(saved_config_path(stage_dir)) if saved is not None else None,
            "inferred": prov.inferred, "saved_config_values": prov.saved_config, "saved_config_parts": prov.saved_parts,
            "command_line": prov.command_line, "assumed": prov.assumed, "notes": prov.notes,
        },
    }


def check_stage_completed(stage_dir: Path) -> None:
    """A run's status.json knows whether this stage finished; weights of one that did not may be partial."""
    status = stage_dir.parent / layout.STATUS
    if not status.is_file() or stage_dir.name not in layout.STAGE_NAMES:
        return
    record = json.loads(status.read_text(encoding="utf-8"))
    if stage_dir.name in record.get("stages", []) and not completed(stage_dir.parent, stage_dir.name):
        raise CheckpointMismatch(
            f"{stage_dir}: {status} says stage {stage_dir.name} never completed (status {record.get('status')!r}); "
            f"its weights may be an interrupted save, and it has no {layout.METADATA}"
        )


def describe(meta: dict) -> list[str]:
    """Log lines: where each value of a reconstructed model came from."""
    rec = meta[RECONSTRUCTED]
    saved = f"then the run's {rec['saved_config']}" if rec["saved_config"] else f"(there is no {layout.RESOLVED_CONFIG})"
    if rec.get("guide_metadata"):
        lines = [f"{rec['guide_metadata']} is in the earlier system's (guide) format: the model was rebuilt from it, then "
                 f"weight shapes, {saved}, then the command line (in that order of precedence)"]
    else:
        lines = [f"no {layout.METADATA}: the model was rebuilt from weight shapes, {saved}, then the command line "
                 "(in that order of precedence)"]
    if rec.get("guide_values"):
        lines.append(f"  taken from {GUIDE_FORMAT}: {_format(rec['guide_values'])}")
    if rec["inferred"]:
        lines.append(f"  inferred from weight shapes: {_format(rec['inferred'])}")
    if rec["saved_config"]:
        lines.append(f"  taken from {layout.RESOLVED_CONFIG}: {', '.join(rec['saved_config_parts'])}"
                     + (f"; {_format(rec['saved_config_values'])}" if rec["saved_config_values"] else ""))
    if rec["command_line"]:
        lines.append(f"  taken from the command line: {_format(rec['command_line'])}")
    for key, why in rec["assumed"].items():
        lines.append(f"  assumed {key}={why}")
    lines += [f"  note: {note}" for note in rec["notes"]]
    return lines


def _format(values: dict) -> str:
    return ", ".join(f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}" for k, v in values.items() if not str(k).startswith("_"))


def _brief(node: dict) -> str:
    return f"{str(node.get('_target_', '?')).rsplit('.', 1)[-1]}({_format(node)})"
