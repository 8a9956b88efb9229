"""Where an eval computes (conf/eval.yaml `device`, `precision`): the GPU when the machine has one,
else the CPU, in float32 unless asked otherwise.

The checkpoint holds float32 weights, so a float32 eval rebuilds exactly the model that was saved,
whatever precision it trained in; `precision=bf16` (or fp16, on a GPU) generates under autocast,
faster on a GPU and no longer the saved model's exact numbers (metrics.json records which)."""

from __future__ import annotations

import contextlib

import torch

from vlm_resampler.errors import UserFacingError
from vlm_resampler.training.precision import check_device

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceUnavailable(UserFacingError, RuntimeError):
    """The device asked for is not on this machine."""


def eval_device(setting: str) -> torch.device:
    """The device of `device=<setting>` (auto, cpu, cuda, cuda:N: checked by settings.py), if this
    machine has it."""
    if setting == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(setting)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device={setting}: this machine has no CUDA GPU that torch {torch.__version__} can use: "
            "use device=auto (the GPU when there is one) or device=cpu"
        )
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    count = torch.cuda.device_count()
    if device.index >= count:
        raise DeviceUnavailable(
            f"device={setting}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return device


def check_eval_precision(precision: str, device: torch.device) -> None:
    """Raise PrecisionUnavailable, saying why, when `precision` cannot run on `device`."""
    check_device(precision, cuda=device.type == "cuda")


def describe(device: torch.device) -> str:
    """`cpu`, or `cuda:0 (NVIDIA H100 80GB HBM3)`: what metrics.json and the log say."""
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def autocast(device: torch.device, precision: str):
    """The eval's computation context: autocast to bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def batch_to(batch: dict, device: torch.device) -> dict:
    """A collated batch with its tensors on `device` (other values as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose random state a seeded eval must fork (sampling draws there). `device`
    is a model's (PanoramaVLM.device): a tensor's CUDA device always has its index."""
    return [device.index] if device.type == "cuda" else []
