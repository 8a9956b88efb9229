"""What a config builds, without building it: the resolved resampler settings, exact parameter
counts per module, what each stage trains, and how many tokens reach the LLM.

The model is the one training would build (the same `_target_` tree, the same PanoramaVLM
assembly, the trainer's own freeze matrix from training/stages.py), instantiated on the meta
device: shapes only, no memory, no weights. Backbones are built from their config alone
(`from_config`), which must be available locally: a locally built backbone has it in its cache
directory, a hub model needs its config.json in the local HF cache; nothing is downloaded.

    python launch/inspect.py resampler=bimamba resampler.hidden_dim=1024
    python launch/inspect.py runs/NAME            # a run dir: its resolved_config.yaml
    python launch/inspect.py runs/NAME/finetune   # a stage dir: its checkpoint_metadata.json
    python launch/inspect.py --compare "resampler=bimamba resampler.expand=1.75" "resampler=mlp"
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlm_resampler.config.checked import compose_checked
from vlm_resampler.config.errors import ConfigError
from vlm_resampler.runs import layout

# The backbone loaders a model tree may name; each is replaced by a build from its config alone.
BACKBONE_TARGETS = {
    "vision_encoder": "vlm_resampler.models.backbones.load_vision_encoder",
    "language_model": "vlm_resampler.models.backbones.load_language_model",
}
MODULES = ("vision", "resampler", "projector", "overlap_head", "llm", "lora")  # and any other part with parameters


# ---------------------------------------------------------------------------------------------
# Where the model description comes from: command-line overrides, a run dir or a stage dir.
# ---------------------------------------------------------------------------------------------


@dataclass
class Source:
    label: str  # what the user typed
    kind: str  # overrides | run_dir | stage_dir
    model_tree: dict  # the resolved `model` node (`_target_` tree)
    stages: list[str]
    stage_configs: dict[str, dict | None]  # None: the stage's settings are not known (see notes)
    recorded_trainable: dict[str, int] | None = None  # a stage dir's own record
    notes: list[str] = field(default_factory=list)


def check_for_inspection(cfg: DictConfig) -> list[str]:
    """train.py's checks that concern the model and its stages."""
    from vlm_resampler.config.validate import check_init_from, check_resampler_builds, check_stages, walk_targets

    walk_targets(cfg.model, "model")
    check_resampler_builds(cfg)
    check_init_from(cfg)
    check_stages(cfg)
    return []


def source_from_overrides(overrides: list[str], label: str | None = None) -> Source:
    cfg, notes = compose_checked(overrides, check_for_inspection)
    stages = list(cfg.stages)
    return Source(
        label=label if label is not None else (" ".join(overrides) or "(defaults)"),
        kind="overrides",
        model_tree=OmegaConf.to_container(cfg.model, resolve=True),
        stages=stages,
        stage_configs={s: OmegaConf.to_container(cfg.stage[s], resolve=True) for s in stages},
        notes=notes,
    )


def _load_resolved_config(path: Path) -> dict:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # a damaged file: say which
        raise ConfigError(f"{path}: cannot be read as YAML ({err})") from err


def source_from_dir(path: Path, label: str | None = None) -> Source:
    """A run dir (its resolved_config.yaml: every stage) or a stage dir (its checkpoint_metadata.json:
    that stage; its settings from the run's resolved_config.yaml when the run dir holds one)."""
    from vlm_resampler.runs.metadata import read_metadata

    label = label or str(path)
    if layout.is_stage_dir(path):
        try:
            meta = read_metadata(path)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        stage = meta["stage"]
        run_config = path.parent / layout.RESOLVED_CONFIG
        stage_config, notes = None, []
        if run_config.is_file():
            stage_config = _load_resolved_config(run_config).get("stage", {}).get(stage)
        if stage_config is None:
            notes.append(f"{run_config} has no settings for stage {stage!r}: its trainable counts are the ones recorded in the metadata")
        return Source(label, "stage_dir", meta["model"], [stage], {stage: stage_config}, meta.get("trainable"), notes)
    if layout.is_run_dir(path):
        cfg = _load_resolved_config(path / layout.RESOLVED_CONFIG)
        stages = list(cfg.get("stages") or [])
        return Source(label, "run_dir", cfg["model"], stages, {s: cfg["stage"][s] for s in stages})
    raise ConfigError(
        f"{path}: neither a run directory (with {layout.RESOLVED_CONFIG}) nor a stage directory (with {layout.METADATA})"
    )


def source_from_args(args: list[str], label: str | None = None) -> Source:
    """One directory, or any number of overrides."""
    paths = [a for a in args if "=" not in a and not a.startswith(("~", "+"))]
    if not paths:
        return source_from_overrides(args, label)
    if len(args) != 1:
        raise ConfigError(
            f"{paths[0]}: a run or stage directory is inspected on its own (the model is the one it "
            f"recorded); got it together with {' '.join(a for a in args if a != paths[0])}"
        )
    path = Path(paths[0])
    if not path.is_dir():
        raise ConfigError(f"{paths[0]}: not an override (key=value) and not an existing run or stage directory")
    return source_from_dir(path, label)


# ---------------------------------------------------------------------------------------------
# The model on the meta device.
# ---------------------------------------------------------------------------------------------


def backbone_config(name_or_path: str, revision: str | None, where: str):
    """The backbone's transformers config, from local files only."""
    from transformers import AutoConfig

    from vlm_resampler.models.backbones import LOCAL_PREFIX, BackboneUnavailableError, resolve_backbone

    try:
        if name_or_path.startswith(LOCAL_PREFIX) or Path(name_or_path).expanduser().is_dir():
            # A locally built backbone is built once (as train.py's checks do); its config is in its directory.
            return AutoConfig.from_pretrained(resolve_backbone(name_or_path, revision), local_files_only=True)
        return AutoConfig.from_pretrained(name_or_path, revision=revision, local_files_only=True)
    except BackboneUnavailableError as err:
        raise ConfigError(f"{where}.name_or_path={name_or_path!r}: {err}") from err
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{where}.name_or_path={name_or_path!r}: its config.json (revision {revision or 'main'}) is not "
            "available locally, and inspect reads configs only, it downloads nothing. Fetch the config once "
            f"(`hf download {name_or_path} config.json`), or inspect with backbone=tiny."
        ) from err


def meta_vision_encoder(name_or_path: str, revision: str | None = None):
    """The VisionEncoder that load_vision_encoder would return, with meta tensors."""
    import torch
    from transformers import AutoModel

    from vlm_resampler.models.backbones import VisionEncoder, vision_family

    config = backbone_config(name_or_path, revision, "model.vision_encoder")
    # A full image-text checkpoint: only its vision tower is loaded (as in load_vision_encoder).
    config = getattr(config, "vision_config", None) or config
    try:
        family = vision_family(config)
    except ValueError as err:
        raise ConfigError(f"model.vision_encoder.name_or_path={name_or_path!r}: {err}") from err
    with torch.device("meta"):
        return VisionEncoder(AutoModel.from_config(config), family.default_mean, family.default_std)


def meta_language_model(name_or_path: str, revision: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    config = backbone_config(name_or_path, revision, "model.language_model")
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def build_on_meta(model_tree: dict):
    """The PanoramaVLM of a `_target_` tree, every tensor on the meta device."""
    import torch
    from hydra.utils import instantiate

    from vlm_resampler.runs.targets import check_targets

    try:
        check_targets(model_tree)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    tree = copy.deepcopy(model_tree)
    backbones = {}
    for key, expected in BACKBONE_TARGETS.items():
        node = tree.pop(key)
        if node.get("_target_") != expected:
            raise ConfigError(f"model.{key}._target_={node.get('_target_')!r}: inspect builds only {expected} on the meta device")
        build = meta_vision_encoder if key == "vision_encoder" else meta_language_model
        backbones[key] = build(node["name_or_path"], node.get("revision"))
    with torch.device("meta"):
        try:
            return instantiate(OmegaConf.create(tree), **backbones, _convert_="all")
        except Exception as err:  # e.g. a run dir recorded by older code, whose settings no longer fit
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            hint = ""
            if "meta" in str(cause):
                hint = "; that part reads tensor values while it is constructed, which a meta-device build cannot do"
            raise ConfigError(f"this model cannot be built: {type(cause).__name__}: {cause} (in {_where(cause)}){hint}") from err


def _where(err: BaseException) -> str:
    """The innermost frame of our own package that the error passed through."""
    import traceback

    package = Path(__file__).resolve().parent
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve().is_relative_to(package)]
    if not frames:
        return "a library"
    frame = frames[-1]
    return f"{Path(frame.filename).resolve().relative_to(package.parent)}:{frame.lineno}"


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
            out[name] = {"trains": list(recorded), "trainable": recorded, "trainable_total": trained, "frozen": total - trained, "total": total}
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


def inspect_source(source: Source) -> dict:
    """The report of one source (plain data: what --json prints)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations raised inside peft
        return _inspect(source)


def _inspect(source: Source) -> dict:
    model = build_on_meta(source.model_tree)
    stages = stage_counts(model, source)  # before counting modules: a stage may attach LoRA
    notes = list(source.notes)
    if source.recorded_trainable is not None and source.stage_configs.get(source.stages[0]) is not None:
        computed = stages[source.stages[0]]["trainable"]
        if computed != source.recorded_trainable:
            notes.append(f"the metadata recorded trainable counts {source.recorded_trainable}, this code computes {computed}")
    gh, gw = model.view_grid
    tree = source.model_tree
    resampler_parts = parts(model.resampler)
    return {
        "source": {"kind": source.kind, "label": source.label},
        "resampler_type": model.resampler.type_name,
        # As recorded in checkpoint_metadata.json: every parameter, plus the input width it got.
        "resampler": {k: v for k, v in tree["resampler"].items() if k != "_partial_"} | {"input_dim": model.resampler.input_dim},
        "backbones": {
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
        },
        "lora": model.lora_config,
        "parameters": module_counts(model),
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
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------
# Text output: one table, one value column per config.
# ---------------------------------------------------------------------------------------------


def _value(v) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


Row = tuple[str, str, str, str]  # (group, key, label, value); a header row has group == key


def report_rows(report: dict) -> list[Row]:
    """The rows of one report. Keys are shared across reports, so configs line up in --compare."""
    rows: list[Row] = []

    def header(section: str, label: str | None = None) -> None:
        rows.append((section, section, label or section, ""))

    def add(section: str, label: str, value, group: str | None = None, indent: int = 1) -> None:
        rows.append((group or section, f"{section}/{label}", "  " * indent + label, _value(value)))

    vision, llm = report["backbones"]["vision"], report["backbones"]["llm"]
    header("model")
    add("model", "resampler", report["resampler_type"])
    add("model", "vision encoder", vision["name_or_path"])
    add("model", "vision width, patch", f"{vision['hidden_size']}, {vision['patch_size']}")
    add("model", "language model", llm["name_or_path"])
    add("model", "llm width", llm["hidden_size"])
    lora = report["lora"]
    add("model", "lora", f"r={lora['r']}, {len(lora['target_modules'])} target modules" if lora else "none")

    header("resampler", "resampler (resolved)")
    for key, value in report["resampler"].items():
        if key != "_target_":
            add("resampler", key, value)

    header("parameters")
    for module in (m for m in report["parameters"] if m != "total"):
        add("parameters", module, report["parameters"][module])
        if module == "resampler":
            for part, n in report["resampler_parts"].items():
                rows.append(("parameters/resampler.", f"parameters/resampler.{part}", "      " + part, _value(n)))
                if part in report["resampler_repeated"]:
                    copies, each = report["resampler_repeated"][part]
                    rows.append(("parameters/resampler.", f"parameters/resampler.{part}/each", f"        each of the {part}", f"{each:,} (x{copies})"))
    add("parameters", "total", report["parameters"]["total"])

    t = report["tokens"]
    header("tokens")
    add("tokens", "views per image", t["num_views"])
    add("tokens", "vision tokens per view", f"{t['vision_tokens_per_view']:,} ({t['view_grid'][0]}x{t['view_grid'][1]} patches)")
    add("tokens", "resampler tokens per view", t["tokens_per_view"])
    add("tokens", "tokens per image (to the LLM)", t["tokens_per_image"])

    for name, stage in report["stages"].items():
        section = f"stage {name}"
        header(section)
        for group, n in stage["trainable"].items():
            add(section, f"trains {group}", n, group=f"{section}/trains")
        add(section, "trainable", stage["trainable_total"])
        add(section, "frozen", stage["frozen"])
    return rows


def merge_rows(all_rows: list[list[Row]]) -> list[Row]:
    """The union of several reports' rows, in the first report's order. A row that earlier reports
    lack goes after the last row of its group (a resampler parameter only one type has: at the end
    of that section), or after the row that precedes it in its own report."""
    merged: list[Row] = list(all_rows[0]) if all_rows else []
    for rows in all_rows[1:]:
        keys = [row[1] for row in merged]
        previous = None
        for row in rows:
            group, key = row[0], row[1]
            if key not in keys:
                in_group = [i for i, r in enumerate(merged) if r[0] == group or r[0].startswith(group + "/")]
                at = in_group[-1] + 1 if in_group else (keys.index(previous) + 1 if previous else len(merged))
                merged.insert(at, row)
                keys.insert(at, key)
            previous = key
    return merged


def render(reports: list[dict]) -> str:
    all_rows = [report_rows(r) for r in reports]
    values = [{key: value for _, key, _, value in rows} for rows in all_rows]
    merged = merge_rows(all_rows)
    headers = [r["source"]["label"] for r in reports] if len(reports) == 1 else [f"[{i + 1}]" for i in range(len(reports))]
    label_width = max(len(label) for _, _, label, _ in merged)
    widths = [max([len(h)] + [len(v.get(key, "-")) for _, key, _, _ in merged]) for h, v in zip(headers, values)]
    lines = []
    if len(reports) > 1:
        lines += [f"[{i + 1}] {r['source']['label']}" for i, r in enumerate(reports)] + [""]
    lines.append(" " * label_width + "".join(f"  {h:>{w}}" for h, w in zip(headers, widths)))
    for group, key, label, _ in merged:
        if group == key:
            lines.append(label)
        else:
            lines.append(f"{label:<{label_width}}" + "".join(f"  {v.get(key, '-'):>{w}}" for v, w in zip(values, widths)))
    for i, report in enumerate(reports):
        prefix = f"[{i + 1}] " if len(reports) > 1 else ""
        lines += [f"note: {prefix}{note}" for note in report["notes"]]
    lines.append("(exact counts of the model built on the meta device: no weights were loaded or allocated)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------

USAGE_EXAMPLES = """examples:
  python launch/inspect.py                                   # the default config
  python launch/inspect.py resampler=bimamba resampler.hidden_dim=1024
  python launch/inspect.py runs/NAME                         # what a run built (its resolved_config.yaml)
  python launch/inspect.py runs/NAME/finetune                # one stage (its checkpoint_metadata.json)
  python launch/inspect.py --compare "resampler=bimamba resampler.expand=1.75" "resampler=mlp"
  python launch/inspect.py backbone=tiny --compare resampler=mlp resampler=bimamba  # shared overrides first
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch/inspect.py",
        description="Exact parameter counts, trainable sets per stage and token counts of a config or "
        "a run, built on the meta device (nothing is trained, loaded or downloaded).",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", nargs="*", help="Hydra overrides (key=value), or one run or stage directory")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="CONFIG",
        help="several configs side by side, each one quoted string of overrides (or a directory); "
        "overrides given before --compare apply to all of them",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (a list with --compare)")
    args = parser.parse_args(argv)
    if any(a in ("-m", "--multirun") for a in args.target):
        parser.error("inspect shows one config; use --compare for several")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.compare:
        jobs = [(args.target + shlex.split(item), item) for item in args.compare]
    else:
        jobs = [(args.target, None)]
    reports, failures = [], []
    for overrides, label in jobs:
        try:
            reports.append(inspect_source(source_from_args(overrides, label)))
        except ConfigError as err:
            failures.append((label, str(err)))
    if failures:
        print(f"error: {len(failures)} of {len(jobs)} config(s) cannot be inspected.", file=sys.stderr)
        for label, message in failures:
            print(f"  {f'[{label}] ' if args.compare else ''}{message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reports if args.compare else reports[0], indent=2))
    else:
        print(render(reports))
    return 0
