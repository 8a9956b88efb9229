"""Stage checkpoints: safetensors weights of the trained modules, a peft adapter, and a metadata
file written last. Loads are strict: every key, shape and dtype must match."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vlm_resampler.errors import UserFacingError
from vlm_resampler.runs import layout
from vlm_resampler.runs.atomic import atomic_dir, atomic_path, sha256_file
from vlm_resampler.runs.disk_space import tensor_bytes


class CheckpointMismatch(UserFacingError, RuntimeError):
    """Weights on disk do not fit the model that the metadata describes."""


def module_state(model, modules: list[str]) -> dict[str, torch.Tensor]:
    state = {}
    for name in modules:
        for key, tensor in getattr(model, name).state_dict().items():
            state[f"{name}.{key}"] = tensor.detach().contiguous().cpu()
    return state


def adapter_state(language_model) -> dict[str, torch.Tensor]:
    """The LoRA weights only. The frozen embedding matrix stays with the named backbone, also
    when LoRA targets the (tied) output layer, where peft would otherwise copy it in."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(language_model, save_embedding_layers=False)


def weights_bytes(model, modules: list[str]) -> int:
    """What save_weights will write, in bytes of tensor data."""
    total = tensor_bytes(module_state(model, modules).values())
    if model.lora_config:
        total += tensor_bytes(adapter_state(model.llm).values())
    return total


def save_weights(model, stage_dir: Path, modules: list[str], before_replace: Callable[[], None] = lambda: None) -> dict:
    """Write model.safetensors (and adapter/ when the LLM carries LoRA); return file -> sha256.

    Every file is written in full under a temporary name first; `before_replace()` runs once they
    all are, just before the first rename. A save that fails while writing (a full disk) therefore
    leaves the files it would have replaced as they were."""
    stage_dir = Path(stage_dir)
    files = {}
    with contextlib.ExitStack() as pending:
        tmp = pending.enter_context(atomic_path(stage_dir / layout.WEIGHTS))
        save_file(module_state(model, modules), str(tmp), metadata={"format": "pt"})
        files[layout.WEIGHTS] = sha256_file(tmp)
        if model.lora_config:
            tmp_dir = pending.enter_context(atomic_dir(stage_dir / layout.ADAPTER_DIR))
            adapter = {k: v.detach().contiguous().cpu() for k, v in adapter_state(model.llm).items()}
            save_file(adapter, str(tmp_dir / layout.ADAPTER_WEIGHTS), metadata={"format": "pt"})
            # Not read back by load_from_run (the LoRA settings come from the checkpoint metadata);
            # written so that adapter/ is a standard peft adapter directory for other tools.
            model.llm.peft_config["default"].save_pretrained(str(tmp_dir))
            files[f"{layout.ADAPTER_DIR}/{layout.ADAPTER_WEIGHTS}"] = sha256_file(tmp_dir / layout.ADAPTER_WEIGHTS)
        before_replace()
    return files


def verify_files(stage_dir: Path, recorded: dict[str, str]) -> None:
    for rel, digest in recorded.items():
        path = Path(stage_dir) / rel
        if not path.is_file():
            raise CheckpointMismatch(f"{path}: listed in {layout.METADATA} but missing")
        found = sha256_file(path)
        if found != digest:
            raise CheckpointMismatch(
                f"{path}: sha256 {found[:12]}… differs from the {digest[:12]}… recorded at save time "
                "(the file was changed or is damaged)"
            )


def _check_state(where: str, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:8])}")
    for key in sorted(set(expected) & set(found)):
        e, f = expected[key], found[key]
        if e.shape != f.shape:
            problems.append(f"{key}: model expects shape {list(e.shape)}, file has {list(f.shape)}")
        elif e.dtype != f.dtype:
            problems.append(f"{key}: model expects {e.dtype}, file has {f.dtype}")
    if problems:
        raise CheckpointMismatch(f"{where}:\n  " + "\n  ".join(problems))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or an error naming it (a truncated or garbled file, unverified)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointMismatch(
            f"{path}: cannot be read as safetensors ({err}); the file is damaged or truncated"
        ) from err


def load_weights(model, stage_dir: Path, modules: list[str]) -> None:
    stage_dir = Path(stage_dir)
    path = stage_dir / layout.WEIGHTS
    found = read_safetensors(path)
    _check_state(str(path), module_state(model, modules), found)
    for name in modules:
        prefix = f"{name}."
        sub = {k[len(prefix) :]: v for k, v in found.items() if k.startswith(prefix)}
        getattr(model, name).load_state_dict(sub, strict=True)
    if model.lora_config:
        from peft import set_peft_model_state_dict

        adapter_path = stage_dir / layout.ADAPTER_DIR / layout.ADAPTER_WEIGHTS
        adapter = read_safetensors(adapter_path)
        _check_state(str(adapter_path), adapter_state(model.llm), adapter)
        result = set_peft_model_state_dict(model.llm, adapter)
        if result.unexpected_keys:
            raise CheckpointMismatch(f"{adapter_path}: peft did not place {result.unexpected_keys[:8]}")
