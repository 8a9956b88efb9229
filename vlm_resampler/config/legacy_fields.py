"""Which key of the guide's format maps to which setting of ours, with the kind of value expected,
and how a value is written back (as YAML, as a command-line override)."""

from __future__ import annotations

import json
import re

from vlm_resampler.errors import ConfigError

SECTIONS = ("experiment", "models", "training", "lora", "image_processing")

# models.<flat field> -> resampler parameter (the guide's "simple fields" and their siblings)
FLAT_RESAMPLER_FIELDS = {
    "latent_dimension": "latent_dimension",
    "resampler_hidden_dim": "hidden_dim",
    "resampler_depth": "depth",
    "resampler_use_ln": "use_ln",
    "resampler_dropout": "dropout",
    "resampler_num_query_tokens": "num_query_tokens",
    "resampler_num_hidden_layers": "num_hidden_layers",
    "resampler_attention_heads": "num_attention_heads",
}
VISION_NAME_KEYS = ("vision_name", "vision_model_name")
LLM_NAME_KEYS = ("language_model_name", "lm_model", "lm_name")
MODEL_KEYS = (
    "resampler_type",
    "resampler_config",
    *FLAT_RESAMPLER_FIELDS,
    *VISION_NAME_KEYS,
    *LLM_NAME_KEYS,
    "overlap_ratio",
)
# training.stage_configs.<stage>.<field> -> stage.<stage>.<setting>
STAGE_FIELDS = {
    "epochs": ("epochs", int),
    "lr": ("lr", float),
    "batch_size": ("batch_size", int),
    "accumulate_grad_batches": ("grad_accum", int),
    "vision_trainable_blocks": ("vision_trainable_blocks", int),
    "vicreg_similarity_weight": ("vicreg.invariance", float),
    "vicreg_variance_weight": ("vicreg.variance", float),
    "vicreg_covariance_weight": ("vicreg.covariance", float),
}
LORA_FIELDS = {
    "rank": ("r", int),
    "alpha": ("alpha", float),
    "dropout": ("dropout", float),
    "target_modules": ("target_modules", list),
}
IMAGE_FIELDS = {
    "fov_deg": ("view.fov_deg", float),
    "overlap_ratio": ("view.overlap", float),
    "image_size": ("backbone.image_size", int),
}
QWEN3_SIZES = ("0.6B", "1.7B", "4B", "8B", "14B", "32B")
PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT = "(default)"
PLAIN_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")  # written without quotes
YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "none", "~"}


def type_name(value) -> str:
    return type(value).__name__


def yaml_value(value) -> str:
    """A scalar or flat list as YAML that OmegaConf reads back as the same value."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        # YAML 1.1 (OmegaConf) reads 5e-05 as a string; 5.0e-05 is a float.
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    if isinstance(value, str):
        plain = PLAIN_STRING.match(value) and value.lower() not in YAML_WORDS
        return value if plain else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    raise ConfigError(
        f"value {value!r} ({type_name(value)}): expected a number, string, boolean, null or a list of them"
    )


def override_value(value) -> str:
    """The same value in Hydra's override grammar."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return yaml_value(value)


KIND_NAMES = {int: "an integer", float: "a number", list: "a list of names"}


def is_kind(value, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)
