"""Command-line conveniences of launch/eval.py, checked before anything is loaded."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vlm_resampler.config.errors import ConfigError
from vlm_resampler.evaluation.settings import check_eval_settings
from vlm_resampler.hub import configure_hub_access
from vlm_resampler.runs import layout
from vlm_resampler.runs.metadata import read_metadata
from vlm_resampler.runs.reconstruct import backbone_names, has_metadata, read_saved_config, required_groups, resolve_checkpoint_dir


MODEL_ROOTS = ("resampler", "backbone", "view", "projector", "model", "prompt")


def translate_argv(argv: list[str]) -> list[str]:
    """Accept the guide's `--checkpoint-dir DIR` (and `--checkpoint-dir=DIR`), and `debug=X`
    (eval's debug options live in conf/eval_debug)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--checkpoint-dir":
            if i + 1 >= len(argv):
                raise SystemExit("error: --checkpoint-dir needs a directory")
            out.append(f"checkpoint_dir={argv[i + 1]}")
            i += 2
            continue
        if arg.startswith("--checkpoint-dir="):
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
    """The backbones an eval loads are the checkpoint's own."""
    names = []
    for cfg in configs:
        if OmegaConf.is_missing(cfg, "checkpoint_dir"):
            continue  # reported by check_eval_config
        try:
            stage_dir = resolve_checkpoint_dir(cfg.checkpoint_dir)
        except FileNotFoundError:
            continue  # reported by check_eval_config
        if has_metadata(stage_dir):
            names += [b["name_or_path"] for b in read_metadata(stage_dir)["backbones"].values()]
        else:
            names += backbone_names(stage_dir, OmegaConf.to_container(cfg.backbone) if cfg.get("backbone") else None)
    configure_hub_access(names)


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
    """Without metadata and without the run's resolved_config.yaml, which backbone, views and
    dataset the checkpoint belongs to are in no file: the command line must name them."""
    if has_metadata(stage_dir) or read_saved_config(stage_dir) is not None:
        return
    # A group counts as chosen when its option's defining key is there (not just one override).
    chosen = {group: "_target_" for group in required_groups()} | {"backbone": "vision_encoder", "data": "name"}
    missing = [group for group, key in chosen.items() if not (cfg.get(group) and key in cfg[group])]
    if missing:
        raise ConfigError(
            f"checkpoint_dir={cfg.checkpoint_dir}: there is no {layout.METADATA} and no {layout.RESOLVED_CONFIG} in "
            f"its run dir, and no weight says which {', '.join(missing)} it was trained with; choose "
            + " ".join(f"{g}=<option>" for g in missing) + " (the resampler is inferred from the weights)"
        )
