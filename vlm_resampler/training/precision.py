"""How a run computes (train.yaml: `precision`, `gradient_checkpointing`, `dataloader_workers`),
and whether this machine can: bf16 and fp16 are the Trainer's mixed precision (autocast; the
weights, their gradients and AdamW's state stay float32, and so do the saved checkpoints).

fp16 needs CUDA (loss scaling). bf16 runs on CUDA devices that support it, and on a CPU only when
it is fast there. Whether it is depends on the CPU's instructions and the ops (on this project's
2-core AMX machine, 6 Dec 2026: one transformer layer's bf16-autocast step took 0.35x the float32
time, a debug=smoke finetune step 1.27x, and pure bf16 weights were far slower), so the decision is
a measurement of one transformer layer's training step, made on the machine that trains."""

from __future__ import annotations

import time

import torch
from torch import nn

from vlm_resampler.errors import UserFacingError

CPU_BF16_MAX_SLOWDOWN = 1.5  # bf16 refused on a CPU where the probe step is slower than this x fp32


class PrecisionUnavailable(UserFacingError, RuntimeError):
    """The precision asked for cannot run (well) on this machine."""


def trainer_flags(precision: str) -> dict:
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def _probe_step(block: nn.Module, x: torch.Tensor, bf16: bool) -> float:
    start = time.perf_counter()
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = block(x)
        out.float().square().mean().backward()
    return time.perf_counter() - start


def cpu_bf16_slowdown() -> float:
    """Seconds of a bf16-autocast training step of one transformer layer over those of the same
    step in float32, on this CPU now (about a second in all)."""
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)
    x = torch.randn(4, 128, 256)
    _probe_step(block, x, False), _probe_step(block, x, True)  # warm-up: kernels chosen, memory allocated
    return _probe_step(block, x, True) / _probe_step(block, x, False)


def check_device(precision: str, cuda: bool | None = None) -> None:
    """Raise PrecisionUnavailable, saying why, when `precision` cannot run here: on the GPU when
    `cuda`, else on the CPU (default: the GPU when the machine has one, where the Trainer trains)."""
    if precision == "fp32":
        return
    has_gpu = torch.cuda.is_available()
    if cuda is None:
        cuda = has_gpu
    if cuda:
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise PrecisionUnavailable(
                f"precision=bf16: {torch.cuda.get_device_name()} has no bf16 support; use precision=fp16 or fp32"
            )
        return
    # An eval with device=cpu runs on the CPU of a machine that has a GPU too.
    where = "this run computes on the CPU (device=cpu)" if has_gpu else "this machine has no GPU"
    if precision == "fp16":
        raise PrecisionUnavailable(f"precision=fp16: mixed fp16 needs a CUDA GPU, and {where}: use precision=fp32 here")
    slowdown = cpu_bf16_slowdown()
    if slowdown > CPU_BF16_MAX_SLOWDOWN:
        raise PrecisionUnavailable(
            f"precision=bf16: {where}, and on this CPU a bf16 training step runs "
            f"{slowdown:.1f}x slower than float32 (measured just now on one transformer layer; bf16 is allowed "
            f"on a CPU up to {CPU_BF16_MAX_SLOWDOWN}x): use precision=fp32 here"
        )


def enable_gradient_checkpointing(model) -> None:
    """Recompute the LLM's and the vision tower's layer activations in the backward pass instead of
    keeping them (less memory, about a third more compute). Non-reentrant: the frozen LLM's inputs
    (the visual tokens) carry the gradient, its weights need none."""
    options = {"use_reentrant": False}
    for part in (model.llm, model.vision.model):
        # transformers 5.25 renamed it (the old name still works, with a FutureWarning); setup.cfg allows 5.x
        enable = getattr(part, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=options)
        else:
            part.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
