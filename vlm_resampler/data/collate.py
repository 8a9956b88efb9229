"""Batches for both objectives. Text is LEFT padded in training and in generation alike, so the
answer always ends at the last position and positions are counted from the first real token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm_resampler.data.prompts import PromptFormat, answer_ids, prompt_ids

IGNORE_INDEX = -100


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


@dataclass
class CaptionCollator:
    """Examples {panorama [3,H,W] float, query, answer} -> panoramas, input_ids, attention_mask, labels."""

    tokenizer: object
    prompt: PromptFormat
    max_answer_tokens: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences, labels = [], []
        for ex in examples:
            prompt = prompt_ids(self.tokenizer, self.prompt, ex["query"])
            answer = answer_ids(self.tokenizer, self.prompt, ex["query"], ex["answer"])
            if len(answer) > self.max_answer_tokens:
                raise ValueError(
                    f"answer of {len(answer)} tokens exceeds data.max_answer_tokens="
                    f"{self.max_answer_tokens}: {ex['answer'][:80]!r}; raise the limit"
                )
            sequences.append(prompt + answer)
            labels.append([IGNORE_INDEX] * len(prompt) + answer)
        input_ids, attention_mask = left_pad(sequences, self.tokenizer.pad_token_id)
        label_ids, _ = left_pad(labels, IGNORE_INDEX)
        return {**image_inputs(examples), "input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


@dataclass
class PromptCollator:
    """For generation: prompts only, left padded."""

    tokenizer: object
    prompt: PromptFormat

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [prompt_ids(self.tokenizer, self.prompt, ex["query"]) for ex in examples]
        input_ids, attention_mask = left_pad(sequences, self.tokenizer.pad_token_id)
        return {
            "panoramas": torch.stack([ex["panorama"] for ex in examples]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }


def image_inputs(examples: list[dict]) -> dict[str, torch.Tensor]:
    """The batch's panoramas (or cached view features), and object facts when examples carry them."""
    batch = {}
    if "view_features" in examples[0]:
        batch["view_features"] = torch.stack([ex["view_features"] for ex in examples])
    else:
        batch["panoramas"] = torch.stack([ex["panorama"] for ex in examples])
    if "facts" in examples[0]:
        batch["facts"] = torch.stack([ex["facts"] for ex in examples])
    return batch


def panorama_only(examples: list[dict]) -> dict[str, torch.Tensor]:
    """The vision stage needs pixels (or the frozen tower's features) only."""
    return image_inputs(examples)
