"""Eval generation: greedy unless sampling is asked for with a seed; token counts are the
tokens produced before the end-of-turn token; forced lengths hold."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vlm_resampler.config.preflight import compose
from vlm_resampler.data.prompts import PromptFormat
from vlm_resampler.errors import ConfigError
from vlm_resampler.evaluation.generate import HoldEndOfTurn, generate_tokens, predict_items
from vlm_resampler.evaluation.settings import GenerationSettings, check_eval_settings, scores_meteor


@pytest.fixture(scope="module")
def tokenizer():
    from vlm_resampler.models.backbones import load_tokenizer

    return load_tokenizer("vlm-resampler/tiny-qwen3")


@pytest.fixture(scope="module")
def smoke(smoke_config):
    from omegaconf import OmegaConf

    from vlm_resampler.data.datasets import prepare_split
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.run import resolved_container

    cfg = resolved_container(smoke_config())
    model = build_model(cfg["model"], seed=0).eval()
    torch.manual_seed(1)
    for p in model.projector.parameters():  # outputs that depend on the image
        p.data.normal_(0, 0.5)
    data = OmegaConf.create(cfg["data"])
    return model, PromptFormat(**cfg["prompt"]), data, prepare_split(data, "test")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["generation.do_sample=true"], "generation.do_sample=true needs an explicit generation.seed"),
        (["generation.temperature=0.7"], r"generation.temperature=0.7 only applies with generation.do_sample=true"),
        (["generation.do_sample=true", "generation.seed=3", "generation.top_p=1.5"], r"generation.top_p=1.5"),
        (["max_new_tokens=0"], r"max_new_tokens=0"),
        (["report.view_size=4"], r"report.view_size=4"),
        (["num_threads=0"], r"num_threads=0"),
        (["device=gpu"], r"device='gpu': expected auto \(the GPU when the machine has one, else the CPU\), cpu, cuda"),
        (["device=cuda:x"], r"device='cuda:x': expected auto"),
        (["precision=fp8"], r"precision='fp8': expected one of fp32, bf16, fp16"),
    ],
)
def test_bad_generation_settings_stop_before_anything_loads(overrides, message):
    cfg = compose("eval", ["checkpoint_dir=/nowhere", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_eval_settings(cfg)


def test_the_default_is_greedy():
    cfg = compose("eval", ["checkpoint_dir=/nowhere"])
    check_eval_settings(cfg)
    settings = GenerationSettings.from_eval_config(cfg)
    assert (
        settings.do_sample is False and settings.decoding == "greedy" and settings.max_new_tokens == cfg.max_new_tokens
    )


def test_counts_stop_at_the_end_of_turn_token_and_ignore_padding(tokenizer, smoke, monkeypatch):
    model = smoke[0]
    eot, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    fake = torch.tensor([[5, 6, eot, pad], [7, eot, pad, pad], [1, 2, 3, 4]])
    monkeypatch.setattr(model.llm, "generate", lambda **kw: fake)
    monkeypatch.setattr(model, "visual_embeddings", lambda p: torch.zeros(p.shape[0], 1, 8))
    monkeypatch.setattr(model, "splice", lambda ids, mask, vis: {"inputs_embeds": None, "attention_mask": None})
    batch = {"input_ids": None, "attention_mask": None, "panoramas": torch.zeros(3, 3, 8, 16)}
    assert generate_tokens(model, tokenizer, batch, GenerationSettings(max_new_tokens=4)) == [[5, 6], [7], [1, 2, 3, 4]]


def test_hold_end_of_turn_forbids_it_until_the_minimum():
    hold = HoldEndOfTurn(end_of_turn=3, min_new_tokens=2)
    held = hold(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 5))
    assert torch.isinf(held[:, 3]).all() and torch.isinf(held).sum() == 2
    assert not torch.isinf(hold(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 5))).any()


def test_forced_length_gives_exactly_that_many_tokens(tokenizer, smoke):
    from vlm_resampler.data.collate import PromptCollator

    model, prompt, _, _ = smoke
    collate = PromptCollator(tokenizer, prompt)
    batch = collate(
        [{"panorama": torch.rand(3, 64, 128), "query": q} for q in ("Describe.", "What is left of the door?")]
    )
    rows = generate_tokens(model, tokenizer, batch, GenerationSettings(max_new_tokens=6, min_new_tokens=6))
    assert [len(r) for r in rows] == [6, 6]


def test_sampling_with_a_seed_is_reproducible_differs_from_greedy_and_leaves_the_global_rng_alone(tokenizer, smoke):
    model, prompt, data, items = smoke
    # Forced to 8 tokens, so that an ignored do_sample (greedy output) or an ignored seed shows.
    sampled = GenerationSettings(max_new_tokens=8, min_new_tokens=8, do_sample=True, seed=7, temperature=1.5)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first, stats = predict_items(model, tokenizer, prompt, items, data, 2, sampled, "a")
    assert torch.rand(1) == before, "the eval's sampling must not move the caller's random state"
    again, _ = predict_items(model, tokenizer, prompt, items, data, 2, sampled, "b")
    assert first == again
    assert (
        stats["decoding"].startswith("sampled: seed 7")
        and stats["generated_tokens"] == 8 * len(items)
        and stats["batch_size"] == 2
    )
    other_seed, _ = predict_items(model, tokenizer, prompt, items, data, 2, replace(sampled, seed=8), "d")
    greedy, greedy_stats = predict_items(
        model, tokenizer, prompt, items, data, 2, replace(sampled, do_sample=False, seed=None, temperature=1.0), "c"
    )
    assert greedy_stats["decoding"] == "greedy" and greedy_stats["generated_tokens"] == 8 * len(items)
    assert len(greedy) == len(first) == len(items)
    assert first != greedy, "sampling at temperature 1.5 from a random LLM gave the greedy captions"
    assert first != other_seed, "another seed gave the same samples"


def test_an_eval_config_from_before_the_meteor_switch_still_checks_and_scores_meteor():
    """A sweep's conf/ snapshot, taken before `meteor` existed, is what its resumed jobs' evals compose."""
    from omegaconf import open_dict

    cfg = compose("eval", ["checkpoint_dir=/nowhere"])
    with open_dict(cfg):
        del cfg["meteor"]
    check_eval_settings(cfg)
    assert scores_meteor(cfg) is True
    assert scores_meteor(compose("eval", ["checkpoint_dir=/nowhere", "meteor=false"])) is False
