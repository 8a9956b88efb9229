"""Batched generation with the KV cache, prompts left padded and chat-templated as in training
(PromptCollator), stopping at the end-of-turn token the training answers end with."""

from __future__ import annotations

import torch

from vlm_resampler.data.prompts import end_of_turn_id
from vlm_resampler.evaluation.device import batch_to, describe, rng_devices
from vlm_resampler.evaluation.settings import GenerationSettings


class HoldEndOfTurn:
    """Forbids the end-of-turn token until `min_new_tokens` tokens exist: min_new_tokens with
    one column write per step. transformers' own min-length processors rebuild and search a
    vocabulary-sized tensor at every step (tens of ms on CPU for Qwen's 151k vocabulary,
    whatever the batch size), a cost a plain eval never pays and that would flatter batching."""

    def __init__(self, end_of_turn: int, min_new_tokens: int) -> None:
        self.end_of_turn, self.min_new_tokens = end_of_turn, min_new_tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Generating from inputs_embeds, input_ids holds the new tokens only. In place: generate
        # hands processors its own float32 copy of the logits, and a clone is another
        # vocabulary-sized copy per step.
        if input_ids.shape[1] < self.min_new_tokens:
            scores[:, self.end_of_turn] = float("-inf")
        return scores


@torch.no_grad()
def generate_tokens(model, tokenizer, batch: dict, settings: GenerationSettings) -> list[list[int]]:
    """Each row's generated token ids up to (not including) the end-of-turn token: exactly what
    the model produced, so counting them counts real generated tokens."""
    batch = batch_to(batch, model.device)
    spliced = model.splice(batch["input_ids"], batch["attention_mask"], model.visual_embeddings(batch["panoramas"]))
    eot = end_of_turn_id(tokenizer)
    from transformers import LogitsProcessorList

    sampling = (
        {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
        if settings.do_sample
        else {}
    )
    hold = [HoldEndOfTurn(eot, settings.min_new_tokens)] if settings.min_new_tokens else []
    output = model.llm.generate(
        inputs_embeds=spliced["inputs_embeds"],
        attention_mask=spliced["attention_mask"],
        max_new_tokens=settings.max_new_tokens,
        logits_processor=LogitsProcessorList(hold),
        do_sample=settings.do_sample,
        num_beams=1,
        use_cache=True,
        eos_token_id=eot,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    rows = []
    for row in output.tolist():
        # With inputs_embeds only the new tokens come back; rows that ended early are padded.
        rows.append(row[: row.index(eot)] if eot in row else row)
    return rows


def decode(tokenizer, rows: list[list[int]]) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in rows]


def generate_batch(
    model, tokenizer, batch: dict, max_new_tokens: int | None = None, settings: GenerationSettings | None = None
) -> list[str]:
    """Captions for one collated batch; greedy unless `settings` asks for seeded sampling."""
    if settings is None:
        settings = GenerationSettings(max_new_tokens=int(max_new_tokens))
    return decode(tokenizer, generate_tokens(model, tokenizer, batch, settings))


def predict_items(
    model, tokenizer, prompt, items: list[dict], data_cfg, batch_size: int, settings: GenerationSettings, label: str
) -> tuple[list[str], dict]:
    """Captions for eval items in `batch_size` batches, with a progress bar (items/s and
    generated tokens/s), and the throughput for metrics.json."""
    import time

    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from vlm_resampler.data.collate import PromptCollator
    from vlm_resampler.data.datasets import EvalItems

    dataset = EvalItems(items, int(data_cfg["erp_width"]), int(data_cfg["erp_height"]))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=PromptCollator(tokenizer, prompt))
    predictions: list[str] = []
    generated = 0
    started = time.perf_counter()
    # Sampling draws from a generator seeded here, outside the caller's random state.
    with (
        torch.random.fork_rng(devices=rng_devices(model.device)),
        tqdm(total=len(dataset), desc=f"generate ({label})", unit="item") as bar,
    ):
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        for batch in loader:
            rows = generate_tokens(model, tokenizer, batch, settings)
            predictions += decode(tokenizer, rows)
            generated += sum(len(r) for r in rows)
            bar.update(len(rows))
            bar.set_postfix_str(f"{generated / max(time.perf_counter() - started, 1e-9):.1f} tok/s")
    elapsed = time.perf_counter() - started
    stats = {
        "batch_size": batch_size,
        "device": describe(model.device),
        "decoding": settings.decoding,
        "max_new_tokens": settings.max_new_tokens,
        "generated_tokens": generated,
        "elapsed_s": round(elapsed, 2),
        "items_per_s": round(len(predictions) / elapsed, 3),
        "tokens_per_s": round(generated / elapsed, 2),
    }
    return predictions, stats
