"""Batched greedy generation with the KV cache, prompts left padded as in training."""
from __future__ import annotations

import torch


@torch.no_grad()
def generate_batch(model, tokenizer, batch: dict, max_new_tokens: int) -> list[str]:
    spliced = model.splice(batch["input_ids"], batch["attention_mask"], model.visual_embeddings(batch["panoramas"]))
    eos = tokenizer.eos_token_id
    output = model.llm.generate(
        inputs_embeds=spliced["inputs_embeds"],
        attention_mask=spliced["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    texts = []
    for row in output:
        ids = row.tolist()
        if eos in ids:
            ids = ids[: ids.index(eos)]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts
