"""The host memory a GPU node's training processes hold while they load (issue 16;
vlm_resampler/inspection/host_memory.py): which dtype a checkpoint stores, the float32 copy a
16-bit checkpoint costs each process (measured here), inspect's rows, and the sweep's refusal of a
SLURM job whose mem_gb cannot hold its node's processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from vlm_resampler.inspection.host_memory import (
    RUNTIME_BYTES,
    loading_copy_bytes,
    node_bytes,
    stored_dtype,
    stored_in_directory,
)

from conftest import REPO_ROOT, inspect_in_process

QWEN3_1_7B = 1_720_574_976  # models/hub_architectures.py


def small_qwen3(directory, dtype: torch.dtype) -> int:
    """A Qwen3 of about 41 M parameters saved in `dtype`; its parameter count."""
    config = Qwen3Config(
        vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, head_dim=64, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.to(dtype).save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    counts = {
        name: small_qwen3(root / name, dtype) for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))
    }
    return root, counts


def test_the_stored_dtype_is_read_from_the_safetensors_headers(checkpoints, tmp_path):
    root, _ = checkpoints
    assert stored_in_directory(root / "bf16") == ("bfloat16", "safetensors")
    assert stored_in_directory(root / "fp32") == ("float32", "safetensors")
    assert stored_dtype(str(root / "bf16"), None) == ("bfloat16", "its safetensors")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert stored_in_directory(tmp_path) == ("gguf", "a GGUF file")


def test_a_hub_id_reads_its_cached_config_before_the_projects_facts(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    # Nothing cached: the project's facts about the backbones it names; nothing known of others.
    assert stored_dtype("Qwen/Qwen3-1.7B", None) == ("bfloat16", "models/hub_architectures.py")
    assert stored_dtype("google/siglip2-so400m-patch16-256", None)[0] == "float32"
    assert stored_dtype("someone/unknown-model", None) == (None, "unknown")
    assert stored_dtype("Qwen/Qwen3-1.7B", "0123abc")[0] is None  # a pinned commit may differ from the facts
    # A cached config.json says what that checkpoint stores.
    repo = tmp_path / "models--Qwen--Qwen3-1.7B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps({"torch_dtype": "float16"}))
    assert stored_dtype("Qwen/Qwen3-1.7B", None) == ("float16", "its cached config.json")
    assert loading_copy_bytes(10, "float16") == 40 and loading_copy_bytes(10, None) == 40
    assert loading_copy_bytes(10, "float32") == 0


MEASURE = """
import sys
from vlm_resampler.models.backbones import load_language_model

def anon():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024

first = load_language_model(sys.argv[1])  # imports and lazy setup, not counted
before = anon()
second = load_language_model(sys.argv[1])
print(anon() - before)
"""


@pytest.mark.parametrize("stored", ["bf16", "fp32"])
def test_the_planned_loading_copy_is_what_a_loading_process_holds(checkpoints, stored):
    """A bf16 checkpoint loaded in float32 grows the process's own (anonymous) memory by the
    float32 size; a float32 checkpoint is mapped from its file and grows it by almost nothing."""
    root, counts = checkpoints
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(root / stored)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    grown = int(done.stdout.split()[-1])
    planned = loading_copy_bytes(counts[stored], stored_in_directory(root / stored)[0])
    float32_size = 4 * counts[stored]
    print(f"{stored}: grew {grown / 2**20:.1f} MiB, planned {planned / 2**20:.1f} MiB")
    if stored == "bf16":
        assert planned == float32_size
        assert 0.95 <= grown / planned <= 1.10, (grown, planned)
    else:
        assert planned == 0
        assert grown < 0.05 * float32_size, (grown, float32_size)


MEASURE_ON_CUDA = """
import sys
import torch
from vlm_resampler.models.backbones import load_language_model

def anon():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024

# The imports, the CUDA context and transformers' lazy setup, through a float32 checkpoint: mapped,
# so nothing is left freed in the heap for the measured load to reuse.
load_language_model(sys.argv[1]).to("cuda")
torch.cuda.synchronize()
runtime = anon()
model = load_language_model(sys.argv[2])
loaded = anon()
model.to("cuda")
torch.cuda.synchronize()
print(runtime, loaded - runtime, anon() - runtime)
"""


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_runtime_fits_its_allowance_and_the_copy_is_the_plans(checkpoints):
    """What the plan assumes of a GPU node's process: Python, torch, transformers and the CUDA
    context within RUNTIME_BYTES, and loading a bf16 checkpoint adds its float32 copy (what is left
    after the model moved to the GPU is printed: the plan counts the copy while loading)."""
    root, counts = checkpoints
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_ON_CUDA, str(root / "fp32"), str(root / "bf16")], capture_output=True, text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runtime, loading, after_move = map(int, done.stdout.split()[-3:])
    planned = loading_copy_bytes(counts["bf16"], "bfloat16")
    print(f"runtime {runtime / 2**30:.2f} GiB, loading +{loading / 2**20:.0f} MiB (planned {planned / 2**20:.0f}), "
          f"after the move +{after_move / 2**20:.0f} MiB")  # fmt: skip
    assert runtime <= RUNTIME_BYTES, (
        f"the process holds {runtime / 2**30:.2f} GiB before any model: raise RUNTIME_BYTES"
    )
    assert 0.95 <= loading / planned <= 1.10, (loading, planned)


def inspect_json(capsys, *args: str) -> dict:
    code, out = inspect_in_process(capsys, *args, "--json")
    assert code == 0
    return json.loads(out)


def test_inspect_plans_the_host_memory_of_a_hub_backbone_process(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached: the project's facts
    code, text = inspect_in_process(capsys, "backbone=siglip2_so400m_qwen3_1_7b", "--gpu-mem", "80")
    assert code == 0
    assert "host memory (each GPU's process, while it loads)" in text
    assert "bfloat16, float32 copy while loading: 6.41 GiB" in text
    assert "float32, mapped from its file: 0.00 GiB" in text
    report = inspect_json(capsys, "backbone=siglip2_so400m_qwen3_1_7b")
    host = report["host_memory"]
    assert host["backbones"]["llm"]["bytes"] == 4 * QWEN3_1_7B
    assert host["backbones"]["vision"]["bytes"] == 0
    assert host["per_process"] == RUNTIME_BYTES + 4 * QWEN3_1_7B
    # SigLIP2's 3000 images exceed the feature cache's cap: nothing is cached, nothing shared.
    assert host["shared_features"] == 0
    assert node_bytes(host, 8) == 8 * host["per_process"]
    # Eight GPUs at slurm.yaml's default 64 GB: 8 x 8.41 GiB does not fit; 68 does.
    from omegaconf import OmegaConf

    from vlm_resampler.errors import ConfigError
    from vlm_resampler.sweeps.check import check_node_memory

    slurm = OmegaConf.load(REPO_ROOT / "conf" / "hydra" / "launcher" / "slurm.yaml")
    launcher = OmegaConf.create({"_target_": "hydra_plugins.x.SlurmLauncher", "gpus_per_node": 8})
    launcher.tasks_per_node, launcher.mem_gb = 8, slurm.mem_gb
    with pytest.raises(ConfigError, match=r"mem_gb=64: the node's 8 training process\(es\) .* about 67.3 GiB"):
        check_node_memory(report, launcher)
    launcher.mem_gb = 68
    check_node_memory(report, launcher)


def test_cached_features_count_once_per_node(capsys):
    report = inspect_json(capsys, "data.num_train=100")  # the default caches the tower's features
    assert any(plan["vision_features"]["how"] == "cached" for plan in report["memory"].values() if "peak" in plan)
    host = report["host_memory"]
    assert host["shared_features"] > 0
    assert node_bytes(host, 4) == 4 * host["per_process"] + host["shared_features"]
    assert inspect_json(capsys, "data.num_train=200")["host_memory"]["shared_features"] == 2 * host["shared_features"]


def refusal(argv: list[str], capsys) -> tuple[int, str]:
    from vlm_resampler.cli import check_train_argv

    capsys.readouterr()
    try:
        check_train_argv(argv, configure_hub=False)
    except SystemExit as stop:
        return stop.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


def test_a_slurm_sweep_whose_nodes_cannot_hold_their_processes_is_refused(checkpoints, tmp_path, capsys, monkeypatch):
    """Eight GPUs' processes each loading a bf16 LLM as float32: mem_gb must hold eight copies
    plus eight runtimes, or nothing is submitted."""
    import shutil

    from vlm_resampler.models import code_reader
    from vlm_resampler.models.local_backbones import ensure_local_backbone

    # The default's LLM, built by a few-step recipe into a private cache (the real build trains for
    # minutes; only its shape and files matter here), with its weights stored in bfloat16.
    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(tmp_path / "cache"))
    few_steps = dict(code_reader.RECIPE, steps=4, scenes=24, held_out_scenes=3, batch_size=4)
    monkeypatch.setattr(code_reader, "RECIPE", few_steps)
    llm = tmp_path / "llm-bf16"
    shutil.copytree(ensure_local_backbone("vlm-resampler/tiny-qwen3-reader"), llm)
    from safetensors.torch import load_file, save_file

    weights = llm / "model.safetensors"
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(weights)).items()},
        str(weights),
        {"format": "pt"},
    )
    sweep = ["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=8", "resampler=mlp,perceiver",
             f"backbone.language_model.name_or_path={llm}", f"hydra.sweep.dir={tmp_path}/sweep"]  # fmt: skip
    report = inspect_json(capsys, f"backbone.language_model.name_or_path={llm}")
    per_process = report["host_memory"]["per_process"]
    copy = report["host_memory"]["backbones"]["llm"]["bytes"]
    assert copy == 4 * report["parameters"]["llm"] and per_process == RUNTIME_BYTES + copy
    need = 8 * per_process / 2**30
    too_little = int(need)  # GiB, below the need
    code, err = refusal([*sweep, f"hydra.launcher.mem_gb={too_little}"], capsys)
    assert code == 2, err
    assert f"hydra.launcher.mem_gb={too_little}: the node's 8 training process(es)" in err
    assert f"hold about {need:.1f} GiB" in err
    assert f"{llm} stores bfloat16 (its safetensors): float32 copy while loading" in err
    assert f"ask for hydra.launcher.mem_gb={too_little + 1} or more" in err
    assert err.count("hydra.launcher.mem_gb=") >= 4, "both jobs are reported"
    # Enough memory, no --mem at all, or a CPU partition (no GPUs): accepted.
    for accepted in (f"hydra.launcher.mem_gb={too_little + 1}", "hydra.launcher.mem_gb=null"):
        code, err = refusal([*sweep, accepted], capsys)
        assert code == 0, err
    cpu = [a for a in sweep if "gpus_per_node" not in a] + [
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.mem_gb=1",
    ]
    code, err = refusal(cpu, capsys)
    assert code == 0, err
