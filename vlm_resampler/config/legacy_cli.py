"""launch/import_config.py: convert, check the preset the way train.py would (before writing and
again on the written file), write it, and say how to run it."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlm_resampler.config.checked import compose_checked
from vlm_resampler.config.legacy import convert, yaml_options
from vlm_resampler.config.legacy_fields import DEFAULT
from vlm_resampler.config.legacy_preset import Preset, render_preset, write_preset
from vlm_resampler.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Checking: the validation train.py runs, before writing and on the written preset.
# ---------------------------------------------------------------------------------------------


def check_like_train(cfg: DictConfig) -> list[str]:
    """train.py's checks of the model a preset describes (validate.MODEL_CHECKS). A backbone this
    machine cannot load (no hub here) does not make the preset wrong: it is reported as a warning."""
    from vlm_resampler.config.preflight import backbone_names
    from vlm_resampler.config.validate import MODEL_CHECKS, run_checks

    if "transformers" not in sys.modules:  # as train.py: decide on the hub before transformers loads
        from vlm_resampler.hub import configure_hub_access

        configure_hub_access(backbone_names([cfg]))
    run_checks(cfg, MODEL_CHECKS)
    try:
        run_checks(cfg, ("backbones",))
    except ConfigError as err:
        return [f"the backbones cannot be loaded on this machine (train.py will need them): {err}"]
    return []


def _with_origin(message: str, preset: Preset) -> str:
    """Name the old key a failing setting came from."""
    for key, origin in preset.origins.items():
        if origin != DEFAULT and re.search(rf"(?<![\w.]){re.escape(key)}\b", message):
            return f"{message}\n  (from {origin} in {Path(preset.source).name})"
    return message


def verify_written(preset: Preset) -> list[str]:
    """Compose `experiment=<name>` as train.py would, and check that every value arrived."""
    cfg, warnings = compose_checked([f"experiment={preset.name}"], check_like_train)
    wrong = []
    for key, value in preset.values.items():
        found = OmegaConf.select(cfg, key, throw_on_missing=False)
        if OmegaConf.is_config(found):
            found = OmegaConf.to_container(found)
        if found != value:
            wrong.append(f"{key}: {found!r} in the composed config, {value!r} in the preset")
    target = yaml_options("resampler")[preset.resampler]["_target_"]
    if cfg.model.resampler._target_ != target:
        wrong.append(
            f"model.resampler._target_={cfg.model.resampler._target_!r}: expected {target!r} (resampler={preset.resampler})"
        )
    if wrong:
        raise ConfigError("the composed config does not hold the preset's values:\n  " + "\n  ".join(wrong))
    return warnings


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch/import_config.py",
        description="Turn a config in the guide's format (models.resampler_type, models.resampler_config, "
        "training.stage_configs, ...) into a Hydra experiment preset conf/experiment/<name>.yaml, "
        "checked the way train.py checks a config.",
    )
    parser.add_argument("old_config", help="the guide-format YAML file")
    parser.add_argument("--name", help="preset name (default: its experiment.name, else the file name)")
    parser.add_argument("--force", action="store_true", help="replace an existing preset of that name")
    return parser.parse_args(argv)


def load_old(path: Path):
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    # OmegaConf's YAML reading, as for every config here: `lr: 1e-4` is a number (plain YAML 1.1
    # would make it the string "1e-4"). Interpolations are left as they are written.
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:
        raise ConfigError(f"{path}: not a valid YAML config ({err})") from err


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    source = Path(args.old_config)
    try:
        preset = convert(load_old(source), str(source), args.name)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if preset.path.exists() and not args.force:
        print(
            f"error: {preset.path} exists already; pass --force to replace it, or choose another name with --name",
            file=sys.stderr,
        )
        return 2
    print(f"{source} (guide format) -> {preset.path}")
    width = max(len(old) for old, _ in preset.mapped)
    for old, new in preset.mapped:
        print(f"  {old:<{width}} -> {new}")
    for note in preset.notes:
        print(f"note: {note}")
    try:
        # Before anything is written: the same settings as overrides, through train.py's checks.
        compose_checked(preset.overrides(), check_like_train)
    except ConfigError as err:
        print(
            f"error: {source} gives a config that train.py refuses; nothing was written.\n  {_with_origin(str(err), preset)}",
            file=sys.stderr,
        )
        return 2
    try:
        write_preset(preset.path, render_preset(preset), args.force)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {preset.path}")
    try:
        warnings = verify_written(preset)
    except ConfigError as err:
        print(
            f"error: {preset.path} was written but does not pass train.py's checks (the file is kept; "
            f"fix it, or fix {source.name} and rerun with --force):\n  {err}",
            file=sys.stderr,
        )
        return 2
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"checked: it composes and validates. Train with: python launch/train.py experiment={preset.name}")
    return 0
