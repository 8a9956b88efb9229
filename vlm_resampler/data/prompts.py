"""One prompt format for training and generation: the LLM's own chat template, with the
panorama's visual tokens spliced in where the user message says `<image>`.

Whatever the template writes between its generation prompt and the assistant's words belongs to
the prompt, not to the answer: Qwen3's own template writes an empty thinking block there
(`<think>\n\n</think>\n\n`, what its generation prompt holds with enable_thinking=False). As part
of the answer, the model would be trained to produce it and generation would return it with the
words (its tags are not special tokens, so decoding keeps them), spoiling every metric."""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_MARKER = "<image>"
# Placeholder id that no tokenizer produces; the model replaces it by the visual tokens.
IMAGE_SLOT = -200
# The prompt conf/train.yaml trains with unless told otherwise, fixed here so that a checkpoint
# which records no prompt is rebuilt with the same assumption whatever conf/ says later (a test
# keeps conf/train.yaml's default equal to it).
DEFAULT_PROMPT = {"system_prompt": None, "user_template": f"{IMAGE_MARKER}\n{{query}}"}


@dataclass(frozen=True)
class PromptFormat:
    system_prompt: str | None
    user_template: str  # must contain IMAGE_MARKER and "{query}"

    def __post_init__(self) -> None:
        if self.user_template.count(IMAGE_MARKER) != 1 or "{query}" not in self.user_template:
            raise ValueError(
                f"prompt.user_template={self.user_template!r}: expected exactly one "
                f"{IMAGE_MARKER!r} and a '{{query}}' field"
            )

    def messages(self, query: str) -> list[dict[str, str]]:
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": self.user_template.format(query=query)})
        return messages


def _tokenize(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_of_turn_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos token: cannot end a turn")
    return tokenizer.eos_token_id


# Stands for the assistant's words while the template's text around them is found.
ANSWER_PLACEHOLDER = "ANSWERPLACEHOLDER"


def _generation_prompt(tokenizer, fmt: PromptFormat, query: str) -> str:
    return tokenizer.apply_chat_template(fmt.messages(query), tokenize=False, add_generation_prompt=True)


def _after(tokenizer, fmt: PromptFormat, query: str, prompt: str, answer: str) -> str:
    """What the template renders after `prompt`, its generation prompt, for an assistant turn `answer`."""
    full = tokenizer.apply_chat_template(
        fmt.messages(query) + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError(
            f"the chat template of {tokenizer.name_or_path!r} renders a conversation that does not "
            "start with its own generation prompt; cannot separate the answer from the prompt"
        )
    return full[len(prompt) :]


def _lead_in(tokenizer, fmt: PromptFormat, query: str, prompt: str) -> str:
    rest = _after(tokenizer, fmt, query, prompt, ANSWER_PLACEHOLDER)
    if ANSWER_PLACEHOLDER not in rest:
        raise ValueError(f"the chat template of {tokenizer.name_or_path!r} does not render the assistant's words")
    return rest[: rest.index(ANSWER_PLACEHOLDER)]


def answer_lead_in(tokenizer, fmt: PromptFormat, query: str) -> str:
    """What the chat template writes between its generation prompt and the assistant's words
    ("" for plain ChatML; Qwen3's empty thinking block)."""
    return _lead_in(tokenizer, fmt, query, _generation_prompt(tokenizer, fmt, query))


def prompt_ids(tokenizer, fmt: PromptFormat, query: str) -> list[int]:
    """Token ids of the prompt up to the assistant's first word (the template's lead-in included),
    IMAGE_SLOT included once."""
    prompt = _generation_prompt(tokenizer, fmt, query)
    before, after = (prompt + _lead_in(tokenizer, fmt, query, prompt)).split(IMAGE_MARKER)
    return _tokenize(tokenizer, before) + [IMAGE_SLOT] + _tokenize(tokenizer, after)


def answer_ids(tokenizer, fmt: PromptFormat, query: str, answer: str) -> list[int]:
    """Token ids the assistant must produce: the words, the end-of-turn token included."""
    prompt = _generation_prompt(tokenizer, fmt, query)
    lead_in = _lead_in(tokenizer, fmt, query, prompt)
    rest = _after(tokenizer, fmt, query, prompt, answer)
    if not rest.startswith(lead_in):
        raise ValueError(
            f"the chat template of {tokenizer.name_or_path!r} writes {rest[: len(lead_in)]!r} before the answer "
            f"{answer!r}, not the {lead_in!r} the prompt ends with"
        )
    ids = _tokenize(tokenizer, rest[len(lead_in) :])
    eot = end_of_turn_id(tokenizer)
    # Anything the template adds after the end-of-turn token (a newline) is not the model's to say.
    return ids[: ids.index(eot) + 1] if eot in ids else ids + [eot]
