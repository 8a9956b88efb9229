"""The host memory of the training processes of a GPU node: what SLURM's per-node `--mem`
(hydra.launcher.mem_gb) must hold. The GPU's own memory is inspection/memory.py's plan.

Every process (one per GPU, all started together by torchrun or SLURM) loads the backbones in
float32 on the CPU, and only then moves the model to its GPU, so the node's peak is while they load:
- a backbone whose checkpoint stores float32 safetensors is mapped from its file: those pages are
  the page cache's, shared by the node's processes and reclaimable, not any process's own;
- any other checkpoint (bfloat16 or float16 safetensors, like Qwen3's; GGUF; a pickled .bin) is
  converted into a float32 copy in the process's own memory, 4 bytes a parameter;
  tests/test_host_memory.py measures both on this machine's CPU;
- Python, torch, transformers and the CUDA context: RUNTIME_BYTES, an allowance. It is not
  measured here (no GPU); launch/gpu_check.py reports what a real-size process held on a GPU;
- the cached vision features (training/feature_cache.py), where a stage caches them: one file,
  mapped by every process of the node, so counted once per node.
DataLoader workers are forked from their process and share its pages until they write them; they
are not counted."""

from __future__ import annotations

import json
import struct
from pathlib import Path

GiB = 2**30
RUNTIME_BYTES = 2 * GiB
# safetensors' dtype names of floating tensors; integer tensors (buffers) do not decide.
SAFETENSORS_FLOATS = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def safetensors_bytes_by_dtype(path: Path) -> dict[str, int]:
    """Bytes of each floating dtype in one .safetensors file, read from its header alone."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    found: dict[str, int] = {}
    for name, entry in header.items():
        if name != "__metadata__" and entry["dtype"] in SAFETENSORS_FLOATS:
            start, end = entry["data_offsets"]
            dtype = SAFETENSORS_FLOATS[entry["dtype"]]
            found[dtype] = found.get(dtype, 0) + end - start
    return found


def stored_in_directory(directory: Path) -> tuple[str | None, str]:
    """(the dtype most of a checkpoint directory's weight bytes are stored in, the file kind)."""
    # model.safetensors or its shards, what from_pretrained reads first (not other tensors kept beside them)
    files = sorted(directory.glob("model*.safetensors")) or sorted(directory.glob("*.safetensors"))
    if files:
        found: dict[str, int] = {}
        for file in files:
            for dtype, n in safetensors_bytes_by_dtype(file).items():
                found[dtype] = found.get(dtype, 0) + n
        return (max(found, key=found.get) if found else None), "safetensors"
    if any(directory.glob("*.gguf")):
        return "gguf", "a GGUF file"
    if any(directory.glob("*.bin")):
        return None, "a pickled .bin"
    return None, "no weight file"


def stored_dtype(name_or_path: str, revision: str | None) -> tuple[str | None, str]:
    """(the dtype a backbone's checkpoint stores, where that was read), None where it is unknown.
    Reads files only: a locally built backbone's directory, a directory, a hub id's cached
    config.json, else this project's facts about the hub backbones it names."""
    from huggingface_hub import try_to_load_from_cache

    from vlm_resampler.models.hub_architectures import STORED_DTYPES
    from vlm_resampler.models.local_backbones import LOCAL_BACKBONES, local_backbone_dir

    if name_or_path in LOCAL_BACKBONES:
        directory = local_backbone_dir(name_or_path)
        if not directory.is_dir():  # not built yet: every builder saves a float32 model
            return "float32", "built by this project in float32"
        dtype, kind = stored_in_directory(directory)
        return dtype, f"its {kind}"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        dtype, kind = stored_in_directory(path)
        return dtype, f"its {kind}"
    config = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    if isinstance(config, str):
        facts = json.loads(Path(config).read_text())
        dtype = facts.get("dtype") or facts.get("torch_dtype")
        if dtype:
            return str(dtype), "its cached config.json"
    if revision is None and name_or_path in STORED_DTYPES:
        return STORED_DTYPES[name_or_path], "models/hub_architectures.py"
    return None, "unknown"


def loading_copy_bytes(parameters: int, dtype: str | None) -> int:
    """A process's own bytes for one backbone while it loads: none where float32 safetensors are
    mapped, a float32 copy otherwise (also where the stored dtype is unknown: the upper bound)."""
    return 0 if dtype == "float32" else 4 * parameters


def host_plan(backbones: dict, parameters: dict, shared_features: int) -> dict:
    """Per process and per node, in bytes, from inspect's report parts: `backbones` (name and
    revision of "vision" and "llm"), `parameters` (their counts, LoRA apart)."""
    parts = {}
    for part in ("vision", "llm"):
        name, revision = backbones[part]["name_or_path"], backbones[part].get("revision")
        dtype, read_from = stored_dtype(name, revision)
        copy = loading_copy_bytes(parameters[part], dtype)
        how = "mapped from its file" if copy == 0 else "float32 copy while loading"
        parts[part] = {"name_or_path": name, "stored": dtype, "read_from": read_from, "how": how, "bytes": copy}
    per_process = RUNTIME_BYTES + sum(p["bytes"] for p in parts.values())
    return {
        "backbones": parts,
        "runtime": RUNTIME_BYTES,
        "per_process": per_process,
        "shared_features": shared_features,
    }


def node_bytes(plan: dict, processes: int) -> int:
    """Host memory a node of `processes` training processes holds while they load."""
    return processes * plan["per_process"] + plan["shared_features"]


def explain(plan: dict) -> str:
    """The plan's parts on one line, for an error message."""
    gib = lambda n: f"{n / GiB:.2f} GiB"
    parts = [
        f"{p['name_or_path']} stores {p['stored'] or 'an unknown dtype'} ({p['read_from']}): {p['how']}, {gib(p['bytes'])}"
        for p in plan["backbones"].values()
    ]
    parts.append(f"Python, torch and the CUDA context (an allowance), {gib(plan['runtime'])}")
    line = f"per process {gib(plan['per_process'])} = " + " + ".join(parts)
    if plan["shared_features"]:
        line += f"; once per node, the cached vision features all of them map: {gib(plan['shared_features'])}"
    return line
