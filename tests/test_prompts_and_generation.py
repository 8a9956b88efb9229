"""One prompt format for training and generation; left padding; batching changes nothing."""

from __future__ import annotations

import pytest
import torch

from vlm_resampler.data.collate import CaptionCollator, PromptCollator
from vlm_resampler.data.prompts import IMAGE_SLOT, PromptFormat, answer_ids, prompt_ids
from vlm_resampler.evaluation.generate import generate_batch
from vlm_resampler.runs.load import build_model
from vlm_resampler.training.run import resolved_container


@pytest.fixture(scope="module")
def tokenizer():
    from vlm_resampler.models.backbones import load_tokenizer

    return load_tokenizer("vlm-resampler/tiny-qwen3")


FMT = PromptFormat(system_prompt=None, user_template="<image>\n{query}")


def test_the_default_prompt_a_weights_only_rebuild_assumes_is_the_one_training_uses():
    """runs/ rebuilds a checkpoint that records no prompt with DEFAULT_PROMPT, never by reading conf/."""
    from omegaconf import OmegaConf

    from vlm_resampler.catalog import CONF_DIR
    from vlm_resampler.data.prompts import DEFAULT_PROMPT

    assert OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml").prompt) == DEFAULT_PROMPT
    PromptFormat(**DEFAULT_PROMPT)  # a valid format


def test_prompt_has_one_image_slot_and_ends_with_the_generation_prompt(tokenizer):
    ids = prompt_ids(tokenizer, FMT, "Describe the panorama.")
    assert ids.count(IMAGE_SLOT) == 1
    text = tokenizer.decode([i for i in ids if i != IMAGE_SLOT])
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")


def test_answer_ends_with_the_end_of_turn_token(tokenizer):
    ids = answer_ids(tokenizer, FMT, "q", "a red square in front.")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids[:-1]) == "a red square in front."


# Renders like Qwen3's own template where it matters here: the last assistant turn's words follow an
# empty thinking block, which the generation prompt does not hold.
THINKING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_a_templates_thinking_block_is_prompt_not_answer(tokenizer):
    """With Qwen3's template the words follow `<think>\\n\\n</think>\\n\\n`: that belongs to the prompt,
    so the model is trained on the words alone and generation decodes to them (the tags are not
    special tokens: as part of the answer they would stay in every generated caption)."""
    from transformers import AutoTokenizer

    from vlm_resampler.data.prompts import answer_lead_in
    from vlm_resampler.evaluation.generate import decode

    thinking = AutoTokenizer.from_pretrained(tokenizer.name_or_path)  # a copy: the shared one stays as it is
    thinking.chat_template = THINKING_TEMPLATE
    assert answer_lead_in(tokenizer, FMT, "q") == ""
    assert answer_lead_in(thinking, FMT, "q") == "<think>\n\n</think>\n\n"
    prompt = prompt_ids(thinking, FMT, "Describe the panorama.")
    assert thinking.decode([i for i in prompt if i != IMAGE_SLOT]).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    answer = answer_ids(thinking, FMT, "Describe the panorama.", "a red square in front.")
    assert decode(thinking, [answer]) == ["a red square in front."]
    assert answer == answer_ids(tokenizer, FMT, "Describe the panorama.", "a red square in front.")
    thinking.chat_template = "{%- for message in messages %}{{- message['role'] }}{%- endfor %}"
    with pytest.raises(ValueError, match="does not render the assistant's words"):
        answer_lead_in(thinking, FMT, "q")


def test_training_batch_is_left_padded_with_labels_on_the_answer_only(tokenizer):
    collate = CaptionCollator(tokenizer, FMT, 48)
    pano = torch.zeros(3, 8, 16)
    batch = collate(
        [
            {"panorama": pano, "query": "q", "answer": "a red square in front."},
            {"panorama": pano, "query": "a much longer question here", "answer": "a blue circle."},
        ]
    )
    assert batch["attention_mask"][:, -1].all(), "left padding: the last position is real in every row"
    assert (batch["attention_mask"][0, 0] == 0) or (batch["attention_mask"][1, 0] == 0)
    for row in range(2):
        labelled = batch["labels"][row] != -100
        answer = batch["input_ids"][row][labelled]
        assert answer[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        first = int(labelled.float().argmax())
        assert labelled[first:].all(), "the answer is one block at the end"


def test_prompt_over_the_limit_is_an_error_naming_the_setting(tokenizer):
    collate = CaptionCollator(tokenizer, FMT, 3)
    with pytest.raises(ValueError, match="max_answer_tokens=3"):
        collate([{"panorama": torch.zeros(3, 8, 16), "query": "q", "answer": "a long answer of many tokens"}])


def test_batched_generation_equals_one_at_a_time(smoke_config, tokenizer):
    cfg = resolved_container(smoke_config())
    model = build_model(cfg["model"], seed=0).eval()
    # A trained-looking projector so that the outputs depend on the image.
    torch.manual_seed(1)
    for p in model.projector.parameters():
        p.data.normal_(0, 0.5)
    collate = PromptCollator(tokenizer, FMT)
    torch.manual_seed(2)
    examples = [
        {"panorama": torch.rand(3, 64, 128), "query": q}
        for q in ("Describe the panorama.", "What is behind you, and what colour is it?", "Count the objects.")
    ]
    together = generate_batch(model, tokenizer, collate(examples), max_new_tokens=8)
    alone = [generate_batch(model, tokenizer, collate([ex]), max_new_tokens=8)[0] for ex in examples]
    assert together == alone


def test_answer_logits_are_the_full_forward_logits_at_the_answer_positions(smoke_config, tokenizer):
    cfg = resolved_container(smoke_config())
    model = build_model(cfg["model"], seed=0).eval()
    collate = CaptionCollator(tokenizer, FMT, 48)
    torch.manual_seed(3)
    batch = collate(
        [
            {"panorama": torch.rand(3, 64, 128), "query": "q", "answer": "a red square in front."},
            {
                "panorama": torch.rand(3, 64, 128),
                "query": "a longer question",
                "answer": "a blue circle on the left and more.",
            },
        ]
    )
    with torch.no_grad():
        visual = model.visual_embeddings(batch["panoramas"])
        logits, targets = model.answer_logits(visual, batch["input_ids"], batch["attention_mask"], batch["labels"])
        spliced = model.splice(batch["input_ids"], batch["attention_mask"], visual, batch["labels"])
        full = model.llm(
            inputs_embeds=spliced["inputs_embeds"],
            attention_mask=spliced["attention_mask"],
            position_ids=spliced["position_ids"],
        ).logits
    # Only the positions whose next token is an answer token, row by row (no padding rows).
    labels = spliced["labels"]
    rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)
    assert logits.shape == (len(rows), full.shape[-1]) and len(rows) == int((batch["labels"] != -100).sum())
    torch.testing.assert_close(logits, full[rows, cols])
    assert torch.equal(targets, labels[rows, cols + 1])
