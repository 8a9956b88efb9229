"""Vision towers, language models and tokenizers: loaded from the hub or a directory, or built offline.

Everything goes through `from_pretrained`, including the tiny random-init backbones: they are
built once into `cache_root()/backbones/<name>` (models/local_backbones.py) and then loaded
exactly like a hub checkpoint, so the code path a test exercises is the one a real run takes with
`google/siglip-base-patch16-224` or `Qwen/Qwen3-0.6B`. Model trees name this module's loaders as
`_target_`s (runs/targets.py), so they stay here by name.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from vlm_resampler.errors import ConfigError
from vlm_resampler.models.attention import check_attention
from vlm_resampler.models.local_backbones import (
    DECLARED_ARCHITECTURES,
    LOCAL_BACKBONES,
    LOCAL_PREFIX,
    OFFLINE_DEFAULT_HINT,
    BackboneUnavailableError,
    _unknown_local_name_message,
    ensure_local_backbone,
)
from vlm_resampler.models.vision_encoder import VisionEncoder, normalisation, vision_family, vision_tower_class

# ---------------------------------------------------------------------------------------------
# Resolution: registry name, local directory or hub id.
# ---------------------------------------------------------------------------------------------

_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def resolve_backbone(name_or_path: str, revision: str | None = None) -> str:
    """Map a registry name to its built directory; return a local directory or hub id unchanged.

    Fails fast when the hub is switched off (`HF_HUB_OFFLINE=1`) and a hub id is not in the local
    HF cache: otherwise transformers would spend a long time in retries before failing.
    """
    if name_or_path in LOCAL_BACKBONES:
        return str(ensure_local_backbone(name_or_path))
    if name_or_path.startswith(LOCAL_PREFIX):
        raise BackboneUnavailableError(_unknown_local_name_message(name_or_path))
    if Path(name_or_path).expanduser().is_dir():
        return name_or_path
    if _looks_like_a_path(name_or_path) or not _HUB_REPO_ID.match(name_or_path):
        raise BackboneUnavailableError(
            f"Backbone {name_or_path!r} is neither an existing directory, nor a hub id like "
            f"'google/siglip-base-patch16-224', nor a local name ({', '.join(sorted(LOCAL_BACKBONES))})."
        )
    if hub_is_offline() and not _is_in_hf_cache(name_or_path, revision):
        raise BackboneUnavailableError(
            f"The Hugging Face hub is not reachable (HF_HUB_OFFLINE is set) and {name_or_path!r} "
            f"(revision {revision or 'main'}) is not in the local HF cache ({hf_constants.HF_HUB_CACHE}). "
            f"{OFFLINE_DEFAULT_HINT}, pass a local directory, or run where the hub is reachable."
        )
    return name_or_path


def hub_is_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; also honour a value set later.
    return hf_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE_VALUES


def _looks_like_a_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _is_in_hf_cache(repo_id: str, revision: str | None) -> bool:
    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


# ---------------------------------------------------------------------------------------------
# Language models and tokenizers.
# ---------------------------------------------------------------------------------------------


def load_vision_encoder(
    name_or_path: str, revision: str | None = None, attn_implementation: str = "sdpa"
) -> VisionEncoder:
    """Load the vision tower of a checkpoint (a full CLIP/SigLIP model or a vision-only one) in fp32."""
    check_attention(attn_implementation, "vision_encoder.attn_implementation")
    path = resolve_backbone(name_or_path, revision)
    config = AutoConfig.from_pretrained(path, revision=revision)
    vision_config = getattr(config, "vision_config", None)
    if vision_config is not None:
        # Full image-text checkpoint: load only the tower class (e.g. SiglipVisionModel), which
        # takes the `vision_model.*` weights and ignores the text side.
        family = vision_family(vision_config)
        model = _from_pretrained_checked(
            vision_tower_class(vision_config), path, vision_config, revision, attn_implementation
        )
    else:
        family = vision_family(config)
        model = _from_pretrained_checked(AutoModel, path, config, revision, attn_implementation)
    image_mean, image_std = normalisation(path, revision, family)
    return VisionEncoder(model, image_mean=image_mean, image_std=image_std)


def _from_pretrained_checked(
    model_class: type, path: str, config: PretrainedConfig, revision: str | None, attn_implementation: str
) -> PreTrainedModel:
    """from_pretrained in fp32 that refuses to silently leave weights at their random init."""
    model, loading_info = model_class.from_pretrained(
        path,
        config=config,
        revision=revision,
        dtype=torch.float32,
        attn_implementation=attn_implementation,
        output_loading_info=True,
    )
    missing = loading_info["missing_keys"]
    if missing:
        raise ValueError(
            f"{path!r} has no weights for {len(missing)} parameters of {type(model).__name__} "
            f"(e.g. {sorted(missing)[:3]}); this checkpoint does not contain that model."
        )
    return model.eval()


def load_language_model(
    name_or_path: str, revision: str | None = None, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    check_attention(attn_implementation, "language_model.attn_implementation")
    path = resolve_backbone(name_or_path, revision)
    config = AutoConfig.from_pretrained(path, revision=revision)
    return _from_pretrained_checked(AutoModelForCausalLM, path, config, revision, attn_implementation)


def backbone_config(name_or_path: str, revision: str | None, where: str):
    """The backbone's transformers config, from local files only (what inspect builds on the meta
    device, and what train.py's checks compare the views with)."""
    if name_or_path in DECLARED_ARCHITECTURES:  # a build that trains for minutes: not built to be inspected
        return DECLARED_ARCHITECTURES[name_or_path]()
    try:
        if name_or_path.startswith(LOCAL_PREFIX) or Path(name_or_path).expanduser().is_dir():
            # Another locally built backbone is built once (seconds, as train.py's checks do); its config is in its directory.
            return AutoConfig.from_pretrained(resolve_backbone(name_or_path, revision), local_files_only=True)
        return AutoConfig.from_pretrained(name_or_path, revision=revision, local_files_only=True)
    except BackboneUnavailableError as err:
        raise ConfigError(f"{where}.name_or_path={name_or_path!r}: {err}") from err
    except (OSError, ValueError) as err:
        from vlm_resampler.models.hub_architectures import known_architecture

        known = known_architecture(name_or_path, revision)
        if known is not None:  # the project's copy of its config facts (models/hub_architectures.py)
            return known
        raise ConfigError(
            f"{where}.name_or_path={name_or_path!r}: its config.json (revision {revision or 'main'}) is not "
            "available locally, and reading a config here downloads nothing. Fetch the config once "
            f"(`hf download {name_or_path} config.json`), or choose backbone=tiny."
        ) from err


def vision_tower_config(name_or_path: str, revision: str | None):
    """The config of the tower load_vision_encoder loads (of a full image-text checkpoint, only its
    vision side), from local files only."""
    config = backbone_config(name_or_path, revision, "model.vision_encoder")
    return getattr(config, "vision_config", None) or config


# One tokenizer per (source, files) in a process: a Qwen tokenizer.json is ~19 MB and parsing it
# took about 1 s, and a three-stage run loaded it four times (each stage's data, each stage's start
# from the previous checkpoint). Callers share the object, so nothing may change it after loading.
_TOKENIZERS: dict[tuple, PreTrainedTokenizerBase] = {}


def _tokenizer_files_signature(path: str) -> tuple:
    """(name, size, mtime) of a local directory's files, so a rebuilt directory loads afresh."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        return ()  # a hub id: its cached revision does not change under a running process
    stats = {f.name: f.stat() for f in directory.iterdir() if f.is_file()}
    return tuple(sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats.items()))


def load_tokenizer(name_or_path: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """AutoTokenizer that is guaranteed to have a pad token. Never adds tokens: that would resize
    embeddings. Loaded once per process and shared: treat it as read-only."""
    path = resolve_backbone(name_or_path, revision)
    key = (path, revision, _tokenizer_files_signature(path))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = _load_tokenizer_checked(name_or_path, path, revision)
    return _TOKENIZERS[key]


def _load_tokenizer_checked(name_or_path: str, path: str, revision: str | None) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    if tokenizer.pad_token is None:
        raise ValueError(
            f"The tokenizer of {name_or_path!r} has no pad token. Set `pad_token` in its tokenizer_config.json "
            "to a token it already has (Qwen uses <|endoftext|>); adding a new token would resize the embeddings."
        )
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Fingerprints: which exact weights a checkpoint was trained on.
# ---------------------------------------------------------------------------------------------

WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def backbone_fingerprint(path: str | Path, revision: str | None = None) -> str | None:
    """`sha256:<hex>` over a local directory's weight files, `hf-commit:<sha>` for a cached hub id, else None.

    Registry names are resolved (and built) first, so the fingerprint is of what actually loads.
    """
    name = str(path)
    if name in LOCAL_BACKBONES:
        name = str(ensure_local_backbone(name))
    directory = Path(name).expanduser()
    if directory.is_dir():
        return "sha256:" + _hash_weight_files(directory)
    commit = _cached_hub_commit(name, revision)
    return None if commit is None else f"hf-commit:{commit}"


def _hash_weight_files(directory: Path) -> str:
    weight_files = sorted({f for pattern in WEIGHT_FILE_PATTERNS for f in directory.glob(pattern) if f.is_file()})
    if not weight_files:
        raise FileNotFoundError(f"No weight files ({', '.join(WEIGHT_FILE_PATTERNS)}) in {directory}.")
    digest = hashlib.sha256()
    for weight_file in weight_files:
        digest.update(weight_file.name.encode() + b"\0")
        with weight_file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _cached_hub_commit(repo_id: str, revision: str | None) -> str | None:
    if not _HUB_REPO_ID.match(repo_id):
        return None
    cached_config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(cached_config, str):
        return None
    # The HF cache stores files as .../snapshots/<commit>/config.json.
    return Path(cached_config).parent.name
