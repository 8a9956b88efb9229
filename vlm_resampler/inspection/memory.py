"""A memory plan per stage (launch/inspect.py): what one training process holds at its peak, for a
batch size and precision, and whether it fits a GPU of a given size.

Everything is computed from the model built on the meta device, nothing is measured:
- weights: every parameter in float32 (the master copy; bf16/fp16 are autocast), plus, under
  autocast, the 16-bit copies of the weights used in the forward pass (cached for the step);
- gradients (float32) and AdamW's two moments (float32), for what the stage trains only;
- activations kept for the backward pass, by the per-layer rule of Korthikanti et al. (2022,
  "Reducing activation recomputation in large transformer models") for a layer of width h over
  s tokens: 34 * s * h bytes at 16 bits (17 * s * h values); attention probabilities are not kept
  with attn_implementation=sdpa, and with eager each layer of `a` heads keeps a * s * s more (no
  dropout: Korthikanti's 5 * a * s * s bytes less the dropout mask and output); with gradient
  checkpointing, each layer keeps its input (s * h values) and one layer is recomputed at a time.
  They count for the LLM whenever its loss is trained through (resampler, finetune: the gradient
  reaches the visual tokens through every layer), for the tower's blocks that train, and for the
  resampler's layers. The answer's logits and their gradient are kept in
  float32 (Transformers upcasts them);
- the process itself: the CUDA context and allocator reserve on a GPU, Python, torch and the
  data on a CPU (RUNTIME_BYTES, a fixed allowance).
tests/test_real_size.py compares the plan with the measured peak of a real-size CPU run."""

from __future__ import annotations

import math

GiB = 2**30
RUNTIME_BYTES = {"cuda": int(1.0 * GiB), "cpu": int(0.8 * GiB)}
PROMPT_TOKENS = 32  # the chat template and the query around the image (SynthPano's: 20-30 tokens)
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def layer_values(tokens: int, width: int, checkpointed: bool, attention_heads: int = 0) -> int:
    """Values one transformer layer keeps for backward over `tokens` tokens (`attention_heads`:
    the heads whose probabilities it keeps, 0 with sdpa)."""
    if checkpointed:
        return tokens * width
    return 17 * tokens * width + attention_heads * tokens * tokens


def stack_values(tokens: int, width: int, layers: int, checkpointed: bool, attention_heads: int = 0) -> int:
    if layers == 0:
        return 0
    kept = layers * layer_values(tokens, width, checkpointed, attention_heads)
    recomputed = layer_values(tokens, width, False, attention_heads) if checkpointed else 0
    return kept + recomputed


def per_sample_activation_bytes(model, stage: dict, tokens_per_image: int, answer_tokens: int, compute: dict) -> int:
    """Bytes of activations one training example adds in `stage` (see the module's rule)."""
    act = BYTES[compute["precision"]]
    checkpointed = bool(compute["gradient_checkpointing"])
    eager = compute["attn_implementation"] == "eager"
    gh, gw = model.view_grid
    view_tokens = gh * gw
    # the resampler over every view, its layers at its input width (an approximation for every type)
    depth = int(getattr(model.resampler, "depth", None) or getattr(model.resampler, "num_hidden_layers", 1))
    values = model.num_views * stack_values(view_tokens, model.resampler.input_dim, depth, False)
    tower_blocks = int(stage.get("vision_trainable_blocks", 0))
    if tower_blocks:
        blocks = len(model.vision.blocks) if tower_blocks < 0 else tower_blocks
        heads = model.vision.model.config.num_attention_heads if eager else 0
        values += model.num_views * stack_values(view_tokens, model.vision.hidden_size, blocks, checkpointed, heads)
    logits = 0
    if stage.get("objective") != "overlap_vicreg":
        llm = model.llm.config
        sequence = tokens_per_image + PROMPT_TOKENS + answer_tokens
        heads = llm.num_attention_heads if eager else 0
        values += stack_values(sequence, llm.hidden_size, llm.num_hidden_layers, checkpointed, heads)
        logits = 4 * 3 * answer_tokens * llm.vocab_size  # float32 logits, log-softmax, their gradient
    return values * act + logits


def stage_plan(model, counts: dict, stage: dict, tokens_per_image: int, answer_tokens: int, compute: dict,
               batch_size: int, device: str, gpu_gib: float | None = None) -> dict:  # fmt: skip
    """The plan of one stage: bytes of each part and the peak; with `gpu_gib`, whether it fits and
    the largest batch that does."""
    trainable = counts["trainable_total"]
    weights = 4 * counts["total"]
    if compute["precision"] != "fp32":
        weights += 2 * counts["total"]  # autocast's 16-bit copies of the weights the forward uses
    fixed = {
        "weights": weights,
        "gradients": 4 * trainable,
        "optimizer": 8 * trainable,  # AdamW: exp_avg and exp_avg_sq in float32
        "runtime": RUNTIME_BYTES[device],
    }
    per_sample = per_sample_activation_bytes(model, stage, tokens_per_image, answer_tokens, compute)
    plan = fixed | {"activations": per_sample * batch_size, "activations_per_sample": per_sample}
    plan["peak"] = sum(fixed.values()) + plan["activations"]
    plan["batch_size"] = batch_size
    if gpu_gib is not None:
        room = gpu_gib * GiB - sum(fixed.values())
        plan["gpu_gib"] = gpu_gib
        plan["fits"] = plan["peak"] <= gpu_gib * GiB
        plan["largest_batch"] = max(0, math.floor(room / per_sample)) if per_sample else None
    return plan


def memory_plans(model, stages: dict, source, gpu_gib: float | None, batch_size: int | None) -> dict:
    """Per stage of `source`: its plan at the stage's own batch size per process (or `batch_size`)."""
    device = "cuda" if gpu_gib is not None else "cpu"
    plans = {}
    for name, counts in stages.items():
        stage = source.stage_configs.get(name) or {}
        batch = int(batch_size or stage.get("batch_size", 1))
        plans[name] = stage_plan(
            model, counts, stage, model.tokens_per_image, source.answer_tokens, source.compute, batch, device, gpu_gib
        )
    return plans
