"""The model on the meta device: the `_target_` tree training would build, with each backbone
loader replaced by a build from its config alone (shapes only, nothing downloaded)."""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import OmegaConf

from vlm_resampler.errors import ConfigError
from vlm_resampler.models.backbones import backbone_config, vision_tower_config

# The backbone loaders a model tree may name; each is replaced by a build from its config alone.
BACKBONE_TARGETS = {
    "vision_encoder": "vlm_resampler.models.backbones.load_vision_encoder",
    "language_model": "vlm_resampler.models.backbones.load_language_model",
}

# ---------------------------------------------------------------------------------------------
# The model on the meta device.
# ---------------------------------------------------------------------------------------------


def meta_vision_encoder(name_or_path: str, revision: str | None = None, attn_implementation: str = "sdpa"):
    """The VisionEncoder that load_vision_encoder would return, with meta tensors."""
    import torch
    from transformers import AutoModel

    from vlm_resampler.models.vision_encoder import VisionEncoder, vision_family

    config = vision_tower_config(name_or_path, revision)
    try:
        family = vision_family(config)
    except ValueError as err:
        raise ConfigError(f"model.vision_encoder.name_or_path={name_or_path!r}: {err}") from err
    with torch.device("meta"):
        tower = AutoModel.from_config(config, attn_implementation=attn_implementation)
        return VisionEncoder(tower, family.default_mean, family.default_std)


def meta_language_model(name_or_path: str, revision: str | None = None, attn_implementation: str = "sdpa"):
    import torch
    from transformers import AutoModelForCausalLM

    config = backbone_config(name_or_path, revision, "model.language_model")
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


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
            raise ConfigError(
                f"model.{key}._target_={node.get('_target_')!r}: inspect builds only {expected} on the meta device"
            )
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
            raise ConfigError(
                f"this model cannot be built: {type(cause).__name__}: {cause} (in {_where(cause)}){hint}"
            ) from err


def _where(err: BaseException) -> str:
    """The innermost frame of our own package that the error passed through."""
    import traceback

    package = Path(__file__).resolve().parent
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve().is_relative_to(package)]
    if not frames:
        return "a library"
    frame = frames[-1]
    return f"{Path(frame.filename).resolve().relative_to(package.parent)}:{frame.lineno}"
