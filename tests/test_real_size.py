"""Real-size backbones without a hub (models/hub_architectures.py): the hub options of conf/backbone/
inspect offline on the meta device, with the parameter counts of the published models, checked
against counts by hand from each architecture's numbers."""

from __future__ import annotations

import json

import pytest

from conftest import inspect_in_process, run_cli


def siglip_vision_params(width: int, mlp: int, layers: int, patch: int, image: int) -> int:
    """SigLIP's vision tower: patch conv, position table, pre-norm blocks, final norm, and the
    attention-pooling head (a probe, a multi-head attention, a norm and an MLP)."""
    linear = lambda i, o: i * o + o
    norm = 2 * width
    block = 4 * linear(width, width) + linear(width, mlp) + linear(mlp, width) + 2 * norm
    embeddings = 3 * patch * patch * width + width + (image // patch) ** 2 * width
    head = width + 3 * linear(width, width) + linear(width, width) + norm + linear(width, mlp) + linear(mlp, width)
    return embeddings + layers * block + norm + head


def qwen3_params(width: int, mlp: int, layers: int, heads: int, kv_heads: int, head_dim: int, vocab: int) -> int:
    """Qwen3 with tied embeddings: no biases; q/k RMSNorm per head dim; RMSNorm weights only."""
    attention = width * heads * head_dim * 2 + width * kv_heads * head_dim * 2 + 2 * head_dim
    block = attention + 3 * width * mlp + 2 * width
    return vocab * width + layers * block + width


@pytest.mark.parametrize(
    "backbone, vision, llm, published",
    [
        # the models' cards: SigLIP-B/16 ~93 M vision tower, Qwen3-0.6B 0.6 B (0.44 B non-embedding)
        ("siglip_base_qwen3_0_6b", siglip_vision_params(768, 3072, 12, 16, 224), qwen3_params(1024, 3072, 28, 16, 8, 128, 151936), (93e6, 0.6e9)),
        # So400m's vision tower ~0.4 B (428 M); Qwen3-1.7B 1.7 B (1.4 B non-embedding)
        ("siglip2_so400m_qwen3_1_7b", siglip_vision_params(1152, 4304, 27, 16, 256), qwen3_params(2048, 6144, 28, 16, 8, 128, 151936), (428e6, 1.7e9)),
    ],
)  # fmt: skip
def test_hub_options_inspect_offline_with_the_published_models_counts(
    backbone, vision, llm, published, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))  # the counts come from the shipped facts
    done = run_cli("inspect.py", "--json", f"backbone={backbone}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["parameters"]["vision"] == vision
    assert report["parameters"]["llm"] == llm
    # the published sizes are rounded to two digits (Qwen3-1.7B has 1.72 B)
    assert abs(vision - published[0]) / published[0] < 0.02 and abs(llm - published[1]) / published[1] < 0.02


TRAIN_SCRIPT = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print(f"PEAK_RSS_KIB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_size_siglip_base_and_qwen3_0_6b_train_one_step_per_stage_on_cpu(tmp_path, capsys):
    """SigLIP-base-224 + Qwen3-0.6B at their real sizes (random weights, built locally): one
    resampler-stage step and one finetune (LoRA) step at batch 1, 4 views of 224 px, in float32."""
    import math
    import os
    import re
    import subprocess
    import sys

    from conftest import REPO_ROOT

    one_step = ["max_steps=1", "batch_size=1", "logging_steps=1", "save_steps=100"]
    run_dir = tmp_path / "real"
    command = [
        sys.executable, "-c", TRAIN_SCRIPT, str(REPO_ROOT / "launch" / "train.py"),
        "backbone=random_siglip_base_qwen3_0_6b", "resampler=perceiver", "stages=[resampler,finetune]",
        "data.num_train=2", "data.num_val=2", "data.num_test=2", "stage.resampler.object_code_warmup_steps=0",
        *(f"stage.{stage}.{setting}" for stage in ("resampler", "finetune") for setting in one_step),
        "experiment.name=real", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1700, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-4000:]
    peak_gib = int(re.search(r"PEAK_RSS_KIB=(\d+)", done.stderr).group(1)) / 2**20
    print(f"\nreal-size step, SigLIP-base-224 + Qwen3-0.6B, fp32: peak RSS {peak_gib:.2f} GiB")
    for stage in ("resampler", "finetune"):
        log = [json.loads(line) for line in (run_dir / stage / "train_log.jsonl").read_text().splitlines() if line]
        losses = [r["loss"] for r in log if "loss" in r]
        assert len(losses) == 1 and math.isfinite(losses[0]) and losses[0] > 0, (stage, log)
        metadata = json.loads((run_dir / stage / "checkpoint_metadata.json").read_text())
        assert metadata["train"]["steps"] == 1
    trained = json.loads((run_dir / "finetune" / "checkpoint_metadata.json").read_text())["trainable"]
    assert trained.get("lora", 0) > 0, trained
    # 0.6 B + 93 M parameters in float32 are 2.9 GB before anything trains; a CPU step at batch 1 fits in 16 GiB.
    assert 2.5 < peak_gib < 16
    # inspect's memory plan of the same run (its largest stage, at batch 1, on a CPU) within 1.5x of the measured peak
    setup = ["backbone=random_siglip_base_qwen3_0_6b", "resampler=perceiver", "stages=[resampler,finetune]"]
    plans = inspect_json(capsys, *setup, "data.num_train=2", "--batch-size", "1")["memory"]
    planned_gib = max(plans[s]["peak"] for s in ("resampler", "finetune")) / 2**30
    print(f"memory plan: {planned_gib:.2f} GiB; measured peak RSS / plan = {peak_gib / planned_gib:.2f}")
    assert 1 / 1.5 < peak_gib / planned_gib < 1.5


def inspect_json(capsys, *args: str) -> dict:
    code, out = inspect_in_process(capsys, "--json", *args)
    assert code == 0
    return json.loads(out)


def test_memory_plan_adds_up_and_finds_the_largest_batch_for_a_gpu(tmp_path, monkeypatch, capsys):
    """The issue's question: does siglip2-so400m + Qwen3-1.7B + bimamba at finetune batch 8 fit 80 GB?"""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    setup = ["backbone=siglip2_so400m_qwen3_1_7b", "resampler=bimamba", "stage.finetune.batch_size=8"]
    report = inspect_json(capsys, *setup, "--gpu-mem", "80")
    stage, plan = report["stages"]["finetune"], report["memory"]["finetune"]
    assert plan["batch_size"] == 8 and plan["gpu_gib"] == 80
    assert plan["weights"] == 4 * stage["total"]  # float32 master weights
    assert plan["gradients"] == 4 * stage["trainable_total"] and plan["optimizer"] == 8 * stage["trainable_total"]
    parts = ("weights", "gradients", "optimizer", "activations", "tower_working", "feature_cache", "runtime")
    assert plan["step_peak"] == sum(plan[p] for p in parts)
    assert plan["activations"] == 8 * plan["activations_per_sample"]
    # SigLIP2-so400m's features of SynthPano's 3000 training images exceed the cache's 8 GiB: the
    # frozen tower runs in every step, so there is no feature pass and its working memory counts
    assert plan["vision_features"]["how"] == "every step" and plan["feature_pass_peak"] == 0
    assert plan["tower_working"] == 8 * plan["tower_working_per_sample"] > 0
    assert plan["peak"] == plan["step_peak"]
    largest = plan["largest_batch"]
    assert plan["fits"] == (plan["peak"] <= 80 * 2**30) and largest >= 1
    at = lambda batch: plan["peak"] + (batch - 8) * (plan["activations_per_sample"] + plan["tower_working_per_sample"])
    assert at(largest) <= 80 * 2**30 < at(largest + 1), "the largest batch is the last one that fits"
    # The text report says the same.
    text = run_cli("inspect.py", *setup, "--gpu-mem", "80", cwd=tmp_path).stdout
    assert f"largest batch that fits{largest:>10,}".replace(" ", "") in text.replace(" ", "")

    # bf16 keeps 16-bit activations (plus autocast's weight copies); checkpointing keeps a layer's input only.
    bf16 = inspect_json(capsys, *setup, "precision=bf16", "--gpu-mem", "80")["memory"]["finetune"]
    assert bf16["activations_per_sample"] < plan["activations_per_sample"] and bf16["weights"] == 1.5 * plan["weights"]
    light = inspect_json(capsys, *setup, "gradient_checkpointing=true", "--batch-size", "8")["memory"]["finetune"]
    assert light["activations_per_sample"] < plan["activations_per_sample"] / 3
    assert "gpu_gib" not in light, "without --gpu-mem the plan is for this CPU"

    # Eager attention keeps each LLM layer's attention probabilities: 28 layers x 16 heads x s^2
    # float32 values over the sequence (the image's tokens, the prompt and the answer); sdpa keeps none.
    eager_report = inspect_json(capsys, *setup, "attn_implementation=eager", "--gpu-mem", "80")
    eager = eager_report["memory"]["finetune"]
    sequence = eager_report["tokens"]["tokens_per_image"] + 32 + 48
    assert eager["activations_per_sample"] - plan["activations_per_sample"] == 4 * 28 * 16 * sequence**2
    assert eager_report["memory"]["compute"]["attn_implementation"] == "eager"
