"""Command-line conveniences of launch/eval.py, checked before anything is loaded."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from vlm_resampler.catalog import conf_options
from vlm_resampler.errors import ConfigError
from vlm_resampler.evaluation.settings import check_eval_settings
from vlm_resampler.hub import configure_hub_access
from vlm_resampler.runs import layout
from vlm_resampler.runs.guide_metadata import GuideMetadata, GuideMetadataError, read_guide_metadata
from vlm_resampler.runs.locate import backbone_names, has_metadata, read_saved_config, resolve_checkpoint_dir
from vlm_resampler.runs.metadata import read_metadata
from vlm_resampler.runs.reconstruct_parts import required_groups

MODEL_ROOTS = ("resampler", "backbone", "view", "projector", "model", "prompt")


def translate_argv(argv: list[str]) -> list[str]:
    """Accept the guide's `--checkpoint-dir DIR` (and `--checkpoint-dir=DIR`), `--no-verify` (for
    `verify=false`) and `debug=X` (eval's debug options live in conf/eval_debug)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--checkpoint-dir":
            if i + 1 >= len(argv):
                print(
                    "error: --checkpoint-dir needs a directory (--checkpoint-dir DIR); nothing was started.",
                    file=sys.stderr,
                )
                sys.exit(2)
            out.append(f"checkpoint_dir={argv[i + 1]}")
            i += 2
            continue
        if arg == "--no-verify":  # skip the sha256 check of the weight files (logged as such)
            out.append("verify=false")
        elif arg.startswith("--checkpoint-dir="):
            out.append("checkpoint_dir=" + arg.split("=", 1)[1])
        elif arg.startswith("debug="):
            out.append("eval_debug=" + arg.split("=", 1)[1])
        elif "=" in arg and "." in arg.split("=", 1)[0] and arg.split(".", 1)[0] in MODEL_ROOTS:
            # A model setting: the checkpoint decides; accept it here so it can be reported.
            out.append("++" + arg)
        else:
            out.append(arg)
        i += 1
    return out


def configure_hub_for_eval(configs: list[DictConfig]) -> None:
    """The backbones an eval loads are the checkpoint's own. A checkpoint dir that cannot say which
    is refused here, with check_eval_config's message (which names the key and the problem)."""
    names = []
    for cfg in configs:
        try:
            names += checkpoint_backbone_names(cfg)
        except (FileNotFoundError, GuideMetadataError, ValueError, KeyError) as err:
            check_eval_config(cfg)
            raise ConfigError(f"checkpoint_dir={cfg.checkpoint_dir}: {type(err).__name__}: {err}") from err
    configure_hub_access(names)


def checkpoint_backbone_names(cfg: DictConfig) -> list[str]:
    if OmegaConf.is_missing(cfg, "checkpoint_dir"):
        return []  # check_eval_config says what is missing
    stage_dir = resolve_checkpoint_dir(cfg.checkpoint_dir)
    chosen = OmegaConf.to_container(cfg.backbone) if cfg.get("backbone") else None
    if not has_metadata(stage_dir):
        return backbone_names(stage_dir, chosen)
    guide = read_guide_metadata(stage_dir)
    if guide is None:
        return [b["name_or_path"] for b in read_metadata(stage_dir)["backbones"].values()]
    return guide_backbone_names(guide, chosen)


def guide_backbone_names(guide: GuideMetadata, chosen: dict | None) -> list[str]:
    """The names a guide-format checkpoint loads: its own, unless no backbone option has them and
    the command line chose one in their place."""
    from vlm_resampler.runs.guide_metadata import backbone_option

    if backbone_option(guide) is None and chosen and isinstance(chosen.get("vision_encoder"), dict):
        return [
            chosen[k]["name_or_path"] for k in ("vision_encoder", "language_model") if isinstance(chosen.get(k), dict)
        ]
    return [n for n in (guide.vision_name, guide.language_model_name) if n]


def check_eval_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "checkpoint_dir"):
        raise ConfigError("checkpoint_dir is required: python launch/eval.py checkpoint_dir=runs/NAME/finetune")
    try:
        stage_dir = resolve_checkpoint_dir(cfg.checkpoint_dir)
    except FileNotFoundError as err:
        raise ConfigError(f"checkpoint_dir={cfg.checkpoint_dir}: {err}") from err
    check_weights_only_eval(stage_dir, cfg)
    if cfg.split not in ("train", "val", "test"):
        raise ConfigError(f"split={cfg.split!r}: expected train, val or test")
    if not (isinstance(cfg.batch_size, int) and cfg.batch_size >= 1):
        raise ConfigError(f"batch_size={cfg.batch_size!r}: expected an int >= 1")
    check_eval_settings(cfg)


def check_weights_only_eval(stage_dir, cfg: DictConfig) -> None:
    """Without metadata of ours and without the run's resolved_config.yaml, which backbone, views
    and dataset the checkpoint belongs to are in no file (or, in a guide-format metadata file,
    perhaps only some of them): the command line must name the others."""
    guide = read_guide(stage_dir) if has_metadata(stage_dir) else None
    if has_metadata(stage_dir) and guide is None:
        try:
            read_metadata(stage_dir)  # ours: damaged or of another format version is said now, not after loading
        except ValueError as err:
            raise ConfigError(f"checkpoint_dir={cfg.checkpoint_dir}: {err}") from err
        return
    if read_saved_config(stage_dir) is not None:
        return
    # A group counts as chosen when its option's defining key is there (not just one override).
    chosen = {group: "_target_" for group in required_groups()} | {"backbone": "vision_encoder", "data": "name"}
    missing = [group for group, key in chosen.items() if not (cfg.get(group) and key in cfg[group])]
    if guide is not None:
        check_guide_eval(guide, cfg, missing)
        return
    if missing:
        raise ConfigError(
            f"checkpoint_dir={cfg.checkpoint_dir}: there is no {layout.METADATA} and no {layout.RESOLVED_CONFIG} in "
            f"its run dir, and no weight says which {', '.join(missing)} it was trained with; choose "
            + " ".join(f"{g}=<option>" for g in missing)
            + " (the resampler is inferred from the weights)"
        )


def read_guide(stage_dir) -> GuideMetadata | None:
    try:
        return read_guide_metadata(stage_dir)
    except GuideMetadataError as err:
        raise ConfigError(str(err)) from err


def check_guide_eval(guide: GuideMetadata, cfg: DictConfig, missing: list[str]) -> None:
    """A guide-format file names the backbone (by its two model names) and the views (by its
    crop_strategy) when we have matching options; the command line must choose the other groups."""
    from vlm_resampler.runs.guide_metadata import (
        backbone_choices,
        backbone_option,
        check_resampler_keys,
        resampler_arguments,
        view_option,
    )

    if (
        guide.resampler_type is not None
    ):  # its keys are checked before anything loads (the type against the weights later)
        try:
            check_resampler_keys(
                guide, *resampler_arguments(conf_options("resampler")[guide.resampler_type]["_target_"])
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err
    problems = []
    if "backbone" in missing and backbone_option(guide) is None:
        problems.append(
            f"{guide.path} names vision_name={guide.vision_name!r}, language_model_name={guide.language_model_name!r}, "
            f"and no conf/backbone option has these two ({backbone_choices()}): choose backbone=<option>"
        )
    if "view" in missing and view_option(guide) is None:
        said = (
            f"training_config.crop_strategy={guide.crop_strategy!r} is none of our view options"
            if guide.crop_strategy
            else "no training_config.crop_strategy"
        )
        problems.append(f"{guide.path}: {said} ({', '.join(conf_options('view'))}): choose view=<option>")
    others = [g for g in missing if g not in ("backbone", "view")]
    if others:
        problems.append(
            f"its {layout.METADATA} is in the earlier system's (guide) format, which does not say which "
            f"{', '.join(others)} the checkpoint was trained with (nor does any weight); choose "
            + " ".join(f"{g}=<option>" for g in others)
        )
    if problems:
        raise ConfigError(f"checkpoint_dir={cfg.checkpoint_dir}: " + "\n  ".join(problems))
