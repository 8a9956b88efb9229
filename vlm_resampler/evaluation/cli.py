"""Command-line conveniences of launch/eval.py, checked before anything is loaded."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vlm_resampler.config.errors import ConfigError
from vlm_resampler.hub import configure_hub_access
from vlm_resampler.runs import layout
from vlm_resampler.runs.metadata import read_metadata


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
            stage_dir = layout.resolve_stage_dir(cfg.checkpoint_dir)
        except FileNotFoundError:
            continue  # reported by check_eval_config
        names += [b["name_or_path"] for b in read_metadata(stage_dir)["backbones"].values()]
    configure_hub_access(names)


def check_eval_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "checkpoint_dir"):
        raise ConfigError("checkpoint_dir is required: python launch/eval.py checkpoint_dir=runs/NAME/finetune")
    try:
        stage_dir = layout.resolve_stage_dir(cfg.checkpoint_dir)
    except FileNotFoundError as err:
        raise ConfigError(f"checkpoint_dir={cfg.checkpoint_dir}: {err}") from err
    if cfg.split not in ("train", "val", "test"):
        raise ConfigError(f"split={cfg.split!r}: expected train, val or test")
    if not (isinstance(cfg.batch_size, int) and cfg.batch_size >= 1):
        raise ConfigError(f"batch_size={cfg.batch_size!r}: expected an int >= 1")
