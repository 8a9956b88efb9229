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
- the frozen vision tower's working memory, when it runs in every step (its features are not
  cached: `cache_vision_features=false`, some of its blocks train, or the training set's features
  exceed the cache's cap, VLM_RESAMPLER_FEATURE_CACHE_MAX_GB): nothing is kept for backward, but
  at the widest point of a pre-norm block four s * h float32 tensors (the embeddings' output,
  which the encoder's caller holds for the whole pass, the block's input, which the encoder's
  loop holds, the residual stream and the normed input; float32 under autocast too: LayerNorm
  runs in float32) live beside the MLP's hidden layer before and after its activation
  (2 * s * mlp values), over every view of the batch;
- on a CPU, the cached features themselves (float32, held for the whole stage; on a GPU they
  are in the host's memory);
- the process itself: the CUDA context and allocator reserve on a GPU, Python, torch and the
  data on a CPU (RUNTIME_BYTES, a fixed allowance).
When the features are cached, they are computed once before the stage trains
(training/feature_cache.py: batches of BATCH panoramas, float32, no optimizer yet); that pass has
its own peak, and the stage's peak is the larger of the two.
tests/test_real_size.py compares the plan with the measured peak of a real-size CPU run, and
tests/test_memory_plan.py the tower's working memory with a measured forward."""

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


def tower_working_bytes(tokens: int, width: int, mlp: int, precision: str) -> int:
    """Bytes a forward through a frozen pre-norm tower of `width` and MLP width `mlp` holds at
    once over `tokens` tokens (see the module's rule)."""
    return tokens * (4 * width * 4 + 2 * mlp * BYTES[precision])


def tower_working_per_view(model, precision: str) -> int:
    gh, gw = model.view_grid
    width = model.vision.hidden_size
    mlp = int(getattr(model.vision.model.config, "intermediate_size", 4 * width))
    return tower_working_bytes(gh * gw, width, mlp, precision)


def vision_features(model, stage: dict, train_images: int | None) -> tuple[str, str]:
    """How a stage gets the frozen tower's features, "cached" | "every step" | "trained", and why
    (short: it is a cell of inspect's table)."""
    from vlm_resampler.training.feature_cache import MAX_BYTES, feature_bytes

    blocks = int(stage.get("vision_trainable_blocks", 0))
    if blocks < 0 or blocks >= len(model.vision.blocks):
        return "trained", "the whole tower trains"
    if blocks:
        return "every step", f"{blocks} block(s) train"
    if not stage.get("cache_vision_features", False):
        return "every step", "cache_vision_features=false"
    if train_images is None:
        return "cached", "assumed: data size unknown"
    size = feature_bytes(model, train_images)
    if size > MAX_BYTES:
        return "every step", f"{train_images} images: {size / GiB:.1f} > cap {MAX_BYTES / GiB:g} GiB"
    return "cached", f"{train_images} images: {size / GiB:.1f} GiB"


def stage_plan(model, counts: dict, stage: dict, tokens_per_image: int, answer_tokens: int, compute: dict,
               batch_size: int, device: str, gpu_gib: float | None = None,
               train_images: int | None = None) -> dict:  # fmt: skip
    """The plan of one stage: bytes of each part, the step's peak, the feature pass's where the
    features are cached, and the peak of both; with `gpu_gib`, whether it fits and the largest
    batch that does."""
    from vlm_resampler.training.feature_cache import BATCH, feature_bytes

    trainable = counts["trainable_total"]
    weights = 4 * counts["total"]
    if compute["precision"] != "fp32":
        weights += 2 * counts["total"]  # autocast's 16-bit copies of the weights the forward uses
    features, why = vision_features(model, stage, train_images)
    # The cached features live in the host's memory: the process's on a CPU, not the GPU's.
    cached_table = feature_bytes(model, train_images or 0) if features == "cached" and device == "cpu" else 0
    fixed = {
        "weights": weights,
        "gradients": 4 * trainable,
        "optimizer": 8 * trainable,  # AdamW: exp_avg and exp_avg_sq in float32
        "feature_cache": cached_table,
        "runtime": RUNTIME_BYTES[device],
    }
    per_sample = per_sample_activation_bytes(model, stage, tokens_per_image, answer_tokens, compute)
    working = model.num_views * tower_working_per_view(model, compute["precision"]) if features == "every step" else 0
    plan = fixed | {"activations": per_sample * batch_size, "activations_per_sample": per_sample}
    plan |= {"tower_working": working * batch_size, "tower_working_per_sample": working}
    plan["vision_features"] = {"how": features, "why": why}
    plan["step_peak"] = sum(fixed.values()) + plan["activations"] + plan["tower_working"]
    plan["feature_pass_peak"] = 0
    if features == "cached":
        panoramas = min(BATCH, train_images or BATCH)
        pass_working = panoramas * model.num_views * tower_working_per_view(model, "fp32")
        plan["feature_pass_peak"] = 4 * counts["total"] + fixed["runtime"] + pass_working + cached_table
    plan["peak"] = max(plan["step_peak"], plan["feature_pass_peak"])
    plan["batch_size"] = batch_size
    if gpu_gib is not None:
        room = gpu_gib * GiB - sum(fixed.values())
        plan["gpu_gib"] = gpu_gib
        plan["fits"] = plan["peak"] <= gpu_gib * GiB
        growth = per_sample + working
        if plan["feature_pass_peak"] > gpu_gib * GiB:
            plan["largest_batch"] = 0
        else:
            plan["largest_batch"] = max(0, math.floor(room / growth)) if growth else None
    return plan


def fitting_alternatives(plan_at, name: str, stage: dict, compute: dict, batch: int, largest: int | None,
                         own_batch: bool) -> list[dict]:  # fmt: skip
    """Settings under which a stage that does not fit would: the same optimizer batch in smaller
    steps (batch_size / k with grad_accum * k, where the plan is at the stage's own batch), and the
    memory settings off now (precision=bf16, gradient_checkpointing=true, both) at this batch.
    `plan_at(compute, batch)` plans the stage; each alternative as its overrides and planned peak."""
    found = []
    if own_batch and largest:
        k = next((k for k in range(2, batch + 1) if batch % k == 0 and batch // k <= largest), None)
        if k:
            accum = int(stage.get("grad_accum", 1)) * k
            overrides = [f"stage.{name}.batch_size={batch // k}", f"stage.{name}.grad_accum={accum}"]
            found.append({"overrides": overrides, "peak": plan_at(compute, batch // k)["peak"]})
    settings = []
    if compute["precision"] == "fp32":
        settings.append({"precision": "bf16"})
    if not compute["gradient_checkpointing"]:
        settings.append({"gradient_checkpointing": True})
    if len(settings) == 2:
        settings.append(settings[0] | settings[1])
    for change in settings:
        plan = plan_at(compute | change, batch)
        if plan["fits"]:
            overrides = [f"{key}={str(value).lower()}" for key, value in change.items()]
            found.append({"overrides": overrides, "peak": plan["peak"]})
    return found


def memory_plans(model, stages: dict, source, gpu_gib: float | None, batch_size: int | None) -> dict:
    """Per stage of `source`: its plan at the stage's own batch size per process (or `batch_size`);
    on a GPU it does not fit, the settings under which it would."""
    device = "cuda" if gpu_gib is not None else "cpu"
    plans = {}
    for name, counts in stages.items():
        stage = source.stage_configs.get(name) or {}
        batch = int(batch_size or stage.get("batch_size", 1))

        def plan_at(compute: dict, batch: int, counts=counts, stage=stage) -> dict:
            return stage_plan(
                model, counts, stage, model.tokens_per_image, source.answer_tokens, compute, batch, device, gpu_gib,
                source.train_images,
            )  # fmt: skip

        plans[name] = plan_at(source.compute, batch)
        if gpu_gib is not None and not plans[name]["fits"]:
            plans[name]["fits_with"] = fitting_alternatives(
                plan_at, name, stage, source.compute, batch, plans[name]["largest_batch"], batch_size is None
            )
    return plans
