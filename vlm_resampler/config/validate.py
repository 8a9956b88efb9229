"""Checks on a composed config that Hydra does not make: `_target_` arguments against the
class signature (unknown names, missing values, types, the ranges its constructor declares; what
relates several values, through a meta-device build of the resampler), the
stage list and values, the compute and tracking settings; with config/external.py's checks of what
the config points at, run as the named sets of CHECK_SETS. Runs in seconds, before any backbone is
loaded."""

from __future__ import annotations

import importlib
import inspect
import re
import types
import typing

from omegaconf import DictConfig, ListConfig, OmegaConf

from vlm_resampler.catalog import unknown_resampler_key
from vlm_resampler.config.external import check_backbones_available, check_data, check_init_from
from vlm_resampler.errors import ConfigError, UnknownResamplerKey
from vlm_resampler.ranges import BOOL, NUM_THREADS, PRECISION, OutOfRange, Range, declared_ranges
from vlm_resampler.runs.layout import STAGE_NAMES
from vlm_resampler.runs.targets import refusal
from vlm_resampler.suggest import did_you_mean

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# Widths filled in by PanoramaVLM when it builds the part (never typed in a config).
INJECTED = {
    "model.resampler": {"input_dim"},
    "model.projector": {"input_dim", "output_dim"},
    "model.overlap_head": {"input_dim"},
    "model.stitch": {"latent_dimension", "llm_width", "views", "keeps_token_grid", "grid_hw", "tokens_per_view"},
}


def import_target(path: str, where: str):
    reason = refusal(path)
    if reason is not None:
        raise ConfigError(f"{where}._target_={reason}")
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ConfigError(f"{where}._target_={path!r}: module {module_name!r} not found ({err})") from err
    if not hasattr(module, attr):
        raise ConfigError(f"{where}._target_={path!r}: {module_name} has no {attr!r}")
    return getattr(module, attr)


def _type_ok(value, annotation) -> bool:
    if annotation is inspect.Parameter.empty or value is None and _allows_none(annotation):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation) if a is not type(None)) or (
            value is None and type(None) in typing.get_args(annotation)
        )
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _allows_none(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def check_target_node(node: DictConfig, path: str, where: str) -> None:
    """`path` is the node's place in the model tree (model.resampler), `where` the key a user
    writes for it (resampler), which messages name."""
    target = import_target(str(node._target_), where)
    init = target.__init__ if inspect.isclass(target) else target
    params = dict(inspect.signature(init).parameters)
    params.pop("self", None)
    hints = typing.get_type_hints(init)
    ranges = declared_ranges(init)
    injected = INJECTED.get(path, set())
    given = {k for k in node.keys() if k not in HYDRA_KEYS}
    for key in sorted(given - set(params)):
        if path == "model.resampler":
            message = unknown_resampler_key(key, sorted(set(params) - injected), target.__name__)
            raise UnknownResamplerKey(f"{message}\n  valid keys: {', '.join(k for k in params if k not in injected)}")
        raise ConfigError(
            f"{where}.{key} is not a parameter of {node._target_}.{did_you_mean(key, set(params) - injected)}"
        )
    for key in sorted(given & injected):
        raise ConfigError(f"{where}.{key} is filled in from the model's other parts; remove it from the config")
    for key, param in params.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or key in injected:
            continue
        if key not in given and param.default is inspect.Parameter.empty:
            raise ConfigError(f"{where}.{key} is missing: {node._target_} needs it")
        if key in given:
            value = node[key]
            if OmegaConf.is_missing(node, key):
                raise ConfigError(f"{where}.{key} is ??? (mandatory): give it a value")
            if isinstance(value, (DictConfig, ListConfig)):
                continue
            if key in ranges:  # the declared Range says the type too, in the same words as the constructor
                ranges[key].check(f"{where}.{key}", value, error=ConfigError)
            elif not _type_ok(value, hints.get(key, param.annotation)):
                expected = getattr(hints.get(key), "__name__", str(hints.get(key)))
                raise ConfigError(f"{where}.{key}={value!r}: expected {expected}, found {type(value).__name__}")


def walk_targets(node, path: str, where: str | None = None) -> None:
    """Check every `_target_` node under `node` (at `path`); messages name a node by the key a user
    writes for it (`where`): `view.size` for model.views: ${view}."""
    where = where or path
    if isinstance(node, DictConfig):
        if "_target_" in node:
            check_target_node(node, path, where)
        for key in node.keys():
            if key not in HYDRA_KEYS:
                walk_targets(node[key], f"{path}.{key}", interpolated_key(node, key) or f"{where}.{key}")


def interpolated_key(node: DictConfig, key: str) -> str | None:
    """`view` for a child written `${view}` (a config group the model tree takes whole), else None."""
    raw = node._get_node(key)._value()
    match = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
    return match.group(1) if match else None


def check_resampler_builds(cfg: DictConfig) -> None:
    """Run the resampler's own range checks on the meta device: no memory, no weights."""
    import torch
    from hydra.utils import instantiate

    node = cfg.model.resampler
    with torch.device("meta"):
        try:
            resampler = instantiate(node, _convert_="all")(input_dim=8)
        except OutOfRange as err:
            raise ConfigError(str(err)) from err
    stitch = cfg.model.get("stitch")
    if stitch is not None and stitch.get("mode") == "dedupe_overlap" and not resampler.keeps_token_grid:
        raise ConfigError(
            f"stitch.mode=dedupe_overlap merges tokens of neighbouring views that see the same direction, "
            f"but resampler={resampler.type_name} outputs query tokens, which have no direction: use stitch=concat"
        )


# Every stage option is a number with a range (or a switch), so a value like
# `stage.finetune.lr=abc` is refused here, not as a TypeError deep in the trainer.
POSITIVE_NUMBER = Range(float, "a number > 0", gt=0)
POSITIVE_COUNT = Range(int, "an int > 0", gt=0)
STAGE_VALUE_RANGES = {
    "lr": POSITIVE_NUMBER,
    "weight_decay": Range(float, "a number >= 0", ge=0),
    "warmup_ratio": Range(float, "a number in [0, 1)", ge=0, lt=1),
    "max_grad_norm": POSITIVE_NUMBER,
    "epochs": POSITIVE_NUMBER,
    "max_steps": Range(int, "an int > 0, or -1 to run `epochs`", gt=0, also=(-1,)),
    "batch_size": POSITIVE_COUNT,
    "grad_accum": POSITIVE_COUNT,
    "logging_steps": POSITIVE_COUNT,
    "save_steps": Range(int, "an int > 0 (steps between resumable checkpoints)", gt=0),
    "vision_trainable_blocks": Range(int, "an int >= 0, or -1 for all blocks", ge=-1),
    "object_code_weight": Range(float, "a number >= 0 (0: off)", ge=0),
    "object_code_warmup_steps": Range(int, "an int >= 0", ge=0),
    "cache_vision_features": BOOL,
}


def check_stage_values(name: str, stage: DictConfig) -> None:
    from vlm_resampler.training.stages import TRAINABLE_MODULES

    for key, declared in STAGE_VALUE_RANGES.items():
        if key in stage:
            declared.check(f"stage.{name}.{key}", stage[key], error=ConfigError)
    for module in stage.train:
        if module not in TRAINABLE_MODULES:
            raise ConfigError(
                f"stage.{name}.train: unknown module {module!r}.{did_you_mean(str(module), TRAINABLE_MODULES)} "
                f"Expected some of {list(TRAINABLE_MODULES)}"
            )


def build_views(cfg: DictConfig):
    """The view strategy alone (cheap: geometry only), with its own range checks."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg.model.views, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else err
        raise ConfigError(f"view ({cfg.model.views._target_}): {cause}") from err


def check_views_fit_tower(cfg: DictConfig) -> None:
    """The tower cuts each view into patch_size squares: its config says the size (no weights)."""
    from vlm_resampler.models.backbones import vision_tower_config
    from vlm_resampler.models.vlm import check_views_fit_patches

    node = cfg.model.vision_encoder
    config = vision_tower_config(str(node.name_or_path), node.revision)
    try:
        check_views_fit_patches(build_views(cfg), config.patch_size)
    except OutOfRange as err:
        raise ConfigError(str(err)) from err


# Overlap between two views hardly depends on the token grid: a coarse one answers "any overlap?"
OVERLAP_PROBE_GRID = (8, 8)


def check_views(cfg: DictConfig) -> None:
    views = build_views(cfg)
    if "vision" in cfg.stages and not views.token_correspondence(OVERLAP_PROBE_GRID):
        raise ConfigError(
            f"stages include 'vision', whose overlap loss compares neighbouring views where they see the "
            f"same directions, but view {type(views).__name__} has no overlapping views. Use a strategy with "
            f"overlap (view=e2p, cubemap with overlap > 0, sliding_window, anyres_e2p) or stages=[resampler,finetune]"
        )


def check_stages(cfg: DictConfig) -> None:
    from vlm_resampler.training.stages import OBJECTIVES

    stages = list(cfg.stages)
    if not stages:
        raise ConfigError("stages=[]: expected at least one of " + ", ".join(STAGE_NAMES))
    for name in stages:
        if name not in STAGE_NAMES:
            raise ConfigError(
                f"stages: unknown stage {name!r}.{did_you_mean(name, STAGE_NAMES)} Valid: {list(STAGE_NAMES)}"
            )
    if len(set(stages)) != len(stages):
        raise ConfigError(f"stages={stages}: a stage appears twice")
    order = [STAGE_NAMES.index(s) for s in stages]
    if order != sorted(order):
        raise ConfigError(f"stages={stages}: out of order; stages run as {list(STAGE_NAMES)}")
    for name in stages:
        stage = cfg.stage[name]
        if stage.objective not in OBJECTIVES:
            raise ConfigError(f"stage.{name}.objective={stage.objective!r}: expected one of {list(OBJECTIVES)}")
        check_stage_values(name, stage)
        if stage.objective == "overlap_vicreg" and not stage.vicreg:
            raise ConfigError(f"stage.{name}.vicreg: the overlap objective needs its weights")


COMPUTE_VALUE_RANGES = {
    "num_threads": NUM_THREADS,
    "gradient_checkpointing": BOOL,
    "dataloader_workers": Range(int, "an integer >= 0", ge=0),
}


def check_compute(cfg: DictConfig) -> None:
    """precision, num_threads, gradient_checkpointing, dataloader_workers (whether this machine can run the
    precision is decided where the run trains: training/precision.py)."""
    PRECISION.check("precision", cfg.get("precision", "fp32"), error=ConfigError)
    for key, declared in COMPUTE_VALUE_RANGES.items():
        if key in cfg:
            declared.check(key, cfg[key], error=ConfigError)
    check_attention_setting(cfg)


def check_attention_setting(cfg: DictConfig) -> None:
    """`attn_implementation` is known, and both backbone loaders of the model tree take it (a
    backbone option without `attn_implementation: ${oc.select:attn_implementation,sdpa}` would
    silently keep the loaders' default)."""
    from vlm_resampler.models.attention import check_attention

    wanted = cfg.get("attn_implementation", "sdpa")
    try:
        check_attention(wanted, "attn_implementation")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    for part in ("vision_encoder", "language_model"):
        loader = cfg.model.get(part)
        given = loader.get("attn_implementation", "sdpa") if OmegaConf.is_dict(loader) else wanted
        if given != wanted:
            raise ConfigError(
                f"attn_implementation={wanted!r}, but model.{part}.attn_implementation={given!r}: the backbone "
                f"option's {part} must pass the setting on (`attn_implementation: "
                "${oc.select:attn_implementation,sdpa}`, as conf/backbone/*.yaml do)"
            )


def check_logger(cfg: DictConfig) -> None:
    """conf/logger: known trackers, and string settings (training/tracking.py checks the same)."""
    from vlm_resampler.training.tracking import settings

    try:
        settings(OmegaConf.to_container(cfg.logger, resolve=True) if "logger" in cfg else None)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def check_objective(cfg: DictConfig) -> None:
    """optimized_metric (what a job returns to an Optuna study) names a number its own eval makes."""
    import re

    from vlm_resampler.evaluation.metrics import METRIC_NAMES

    metric = cfg.get("optimized_metric")
    if metric is None:
        return
    split, _, name = str(metric).partition("/")
    known = [*METRIC_NAMES, "image_gap", "QA", "QA_<kind>"]
    if split not in ("train", "val", "test") or not (name in known or re.fullmatch(r"QA_[a-z]+", name)):
        raise ConfigError(
            f"optimized_metric={metric!r}: expected <split>/<name>, split train, val or test, name one of "
            f"{', '.join(known)} (e.g. val/CIDEr)"
        )
    if not cfg.get("eval_after"):
        raise ConfigError(f"optimized_metric={metric}: needs eval_after=true (the job's eval is where it is read)")
    eval_split = "test"  # conf/eval.yaml's default
    for arg in cfg.get("eval_args") or []:
        if str(arg).startswith("split="):
            eval_split = str(arg).split("=", 1)[1]
    if eval_split != split:
        raise ConfigError(
            f"optimized_metric={metric}: the job's eval runs on the {eval_split} split; "
            f"add eval_args=[split={split}] (the hparams_search presets do)"
        )


def check_lr_schedulers(cfg: DictConfig) -> None:
    """Each stage's lr_scheduler is one transformers has (its list costs the transformers import,
    about 3 s: this set runs after the model's, which imports it anyway)."""
    from transformers.trainer_utils import SchedulerType

    schedulers = [s.value for s in SchedulerType]
    for name in cfg.stages:
        wanted = cfg.stage[name].get("lr_scheduler")
        if wanted not in schedulers:
            raise ConfigError(
                f"stage.{name}.lr_scheduler={wanted!r}: no such scheduler."
                f"{did_you_mean(str(wanted), schedulers)}\n  expected one of: {', '.join(schedulers)}"
            )


def check_model(cfg: DictConfig) -> None:
    walk_targets(cfg.model, "model")
    check_resampler_builds(cfg)


# Named check sets, in the order a train command runs them: those that need no transformers
# first (a bad stage value is refused in 2 s; the model's signature walk imports transformers:
# 5 s, 6 Dec, idle). Every entry point runs sets from here: train.py all of them;
# inspect and the legacy importer those that concern the model they describe (their data and
# backbones live on another machine).
CHECK_SETS: dict[str, tuple] = {
    "objective": (check_objective,),
    "stages": (check_stages,),
    "compute": (check_compute,),
    "data": (check_data,),
    "model": (check_model,),
    "schedulers": (check_lr_schedulers,),
    "tracking": (check_logger,),
    "views": (check_views,),
    "continuation": (check_init_from,),
    "backbones": (check_backbones_available, check_views_fit_tower),
}
MODEL_CHECKS = ("model", "stages", "schedulers", "continuation")


def run_checks(cfg: DictConfig, sets: tuple[str, ...]) -> None:
    for name in sets:
        for check in CHECK_SETS[name]:
            check(cfg)


def validate_train_config(cfg: DictConfig) -> None:
    """Everything train.py checks before it builds anything (each job of a sweep too)."""
    run_checks(cfg, tuple(CHECK_SETS))
