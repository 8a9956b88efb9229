"""The metadata of a stage directory whose checkpoint_metadata.json is gone, rebuilt from what is left.

Precedence (DESIGN.md, "Precedence when rebuilding a model"):
1. checkpoint_metadata.json (when present, nothing here runs);
2. weight shapes: the resampler type (from parameter names) and every hyperparameter that
   shapes a tensor (vlm_resampler.resamplers.infer), the projector and overlap head widths,
   the LoRA rank and target modules (from the adapter's tensor names and shapes);
3. the run's saved config (`../resolved_config.yaml`, written before any stage ran): backbones,
   views, prompt, data, seed and the values no shape reveals (norm_first, attention heads,
   LoRA alpha). Its resampler is checked against the weights first: a disagreement is an error
   naming the tensor and both shapes;
4. the eval command line, only for what neither tells: `resampler.<key>=...` for a resampler
   value no shape reveals, `model.lora.alpha=...`, and, when there is no saved config either,
   the `backbone=...` and `view=...` groups (which backbone and which views are not in any
   weight; likewise the group of any other model part no weight describes). The prompt then
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

from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch
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
        elif origin.startswith("assumed "):
            self.assumed[key] = origin[len("assumed "):]
        else:  # inferred, or derived from inferred shapes and a supplied value
            self.inferred[key] = value


# ---- where a checkpoint is ----------------------------------------------------------------

def has_metadata(stage_dir: Path) -> bool:
    return (Path(stage_dir) / layout.METADATA).is_file()


def is_weights_only_stage_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and not has_metadata(path) and (path / layout.WEIGHTS).is_file()


def resolve_checkpoint_dir(path: Path | str) -> Path:
    """A stage dir (with metadata, or with weights only), or a run dir's last completed stage,
    where a stage whose metadata is gone counts as completed when the run's status.json says so."""
    path = Path(path)
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
    """r and target modules from peft's tensor names `...<module>.lora_A.weight` [r, in]."""
    ranks, targets = {}, set()
    for key, shape in adapter_shapes.items():
        m = re.fullmatch(r"(.+)\.lora_A\.weight", key)
        if m:
            ranks[key] = shape[0]
            targets.add(m.group(1).rsplit(".", 1)[-1])
    if not ranks:
        raise ShapeInferenceError(f"adapter: no `*.lora_A.weight` tensors among {sorted(adapter_shapes)[:4]}")
    distinct = sorted(set(ranks.values()))
    if len(distinct) != 1:
        raise ShapeInferenceError(f"adapter: LoRA ranks differ between modules {distinct}; one r per adapter is supported")
    return {"r": distinct[0], "target_modules": sorted(targets), "example": next(iter(ranks))}


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
    prov.inferred |= {"lora.r": found["r"], "lora.target_modules": found["target_modules"]}
    if recorded:
        where = f"{layout.RESOLVED_CONFIG} (stage.{stage_dir.name}.lora)"
        if int(recorded["r"]) != found["r"] or sorted(recorded["target_modules"]) != found["target_modules"]:
            raise CheckpointMismatch(
                f"{adapter}: {found['example']} has r={found['r']} and the adapter targets {found['target_modules']}, "
                f"but {where} says r={recorded['r']}, target_modules={sorted(recorded['target_modules'])}"
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
    return {"r": found["r"], "alpha": user.lora["alpha"], "dropout": 0.0, "target_modules": found["target_modules"]}


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


def reconstruct_metadata(stage_dir: Path, user: UserSettings | None = None) -> dict:
    """Metadata for a weights-only stage dir, in checkpoint_metadata.json's layout (see module doc)."""
    stage_dir, user = Path(stage_dir), user or UserSettings()
    check_stage_completed(stage_dir)
    modules = split_modules(weight_shapes(stage_dir / layout.WEIGHTS))
    for name in ("resampler", "projector", "overlap_head"):
        if name not in modules:
            raise ShapeInferenceError(f"{stage_dir / layout.WEIGHTS}: no {name}.* tensors (found modules {sorted(modules)})")
    saved, prov = read_saved_config(stage_dir), Provenance()
    resampler, input_dim = resampler_node(modules["resampler"], saved, user, prov)
    settings = run_settings(stage_dir, saved, user, prov)
    if saved is not None:
        # Their shapes are checked by the strict load.
        projector, overlap_head = saved["model"]["projector"], saved["model"]["overlap_head"]
        prov.saved_parts += ["projector", "overlap_head"]
    else:
        projector = token_mlp_node(modules["projector"], "projector", with_output=False)
        overlap_head = token_mlp_node(modules["overlap_head"], "overlap_head", with_output=True)
        prov.inferred |= {"projector": _brief(projector), "overlap_head": _brief(overlap_head)}
    model = settings["parts"] | {"resampler": resampler, "projector": projector, "overlap_head": overlap_head,
                                 "lora": lora_tree(stage_dir, saved, user, prov)}
    return {
        "format_version": None,  # there was no metadata file
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
    lines = [f"no {layout.METADATA}: the model was rebuilt from weight shapes, {saved}, then the command line "
             "(in that order of precedence)"]
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
