"""debug=smoke through all three stages, the run directory layout, exact reload, evaluation."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from vlm_resampler import load_from_run
from vlm_resampler.runs import layout
from vlm_resampler.training.run import resolved_container, run_stage

from conftest import answer_logits, inspect_in_process, run_cli, training_batch


@pytest.fixture
def smoke_run(cli_smoke_run):
    return cli_smoke_run


def test_run_directory_has_the_documented_layout(smoke_run):
    run_dir, stdout = smoke_run
    for name in (layout.RESOLVED_CONFIG, layout.RUN_META, layout.STATUS):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / layout.STATUS).read_text())["status"] == "done"
    resolved = (run_dir / layout.RESOLVED_CONFIG).read_text()
    assert "${" not in resolved, "the saved config must be fully resolved"
    for stage in ("vision", "resampler", "finetune"):
        stage_dir = run_dir / stage
        for name in (layout.METADATA, layout.WEIGHTS, layout.TRAIN_METRICS, layout.TRAIN_LOG, layout.LOSS_PLOT):
            assert (stage_dir / name).is_file(), f"{stage}/{name}"
        meta = json.loads((stage_dir / layout.METADATA).read_text())
        assert meta["stage"] == stage and meta["resampler_type"] == "mlp"
        assert meta["resampler"]["hidden_dim"] == 1536 and meta["resampler"]["input_dim"] == 64
        assert set(meta["weights_sha256"]) >= {layout.WEIGHTS}
    assert (run_dir / "finetune" / layout.ADAPTER_DIR / layout.ADAPTER_WEIGHTS).is_file()
    assert not (run_dir / "resampler" / layout.ADAPTER_DIR).exists()
    meta = json.loads((run_dir / "finetune" / layout.METADATA).read_text())
    assert meta["init_from"].endswith("resampler")
    assert meta["model"]["lora"]["r"] == 16
    # The trainable set is printed per stage.
    assert "stage finetune: training" in stdout and "lora" in stdout


def test_eval_from_the_checkpoint_dir_alone(smoke_run):
    run_dir, _ = smoke_run
    done = run_cli("eval.py", "--checkpoint-dir", str(run_dir / "finetune"), "debug=smoke", "resampler.hidden_dim=1024")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ignored resampler.hidden_dim=1024: the checkpoint says resampler.hidden_dim=1536" in done.stdout
    out = run_dir / "finetune" / "eval" / "synthpano-test"
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "query", "prediction", "references"]
    assert len(rows) == 4 and all(len(json.loads(r["references"])) >= 3 for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_items"] == 4
    for scores in (metrics["model"], metrics["baselines"]["untrained"], metrics["baselines"]["constant_caption"]):
        assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} <= set(scores)
    assert metrics["baselines"]["constant_caption"]["CIDEr"] > 0
    dependence = metrics["image_dependence"]
    assert dependence["gap"] == pytest.approx(
        dependence["answer_loss_images_rotated"] - dependence["answer_loss"], abs=1e-3
    )
    assert "image dependence: answer loss" in done.stdout
    # SynthPano extras: the seam subset apart, and exact match on the question/answer pairs.
    subsets = metrics["subsets"]
    assert sum(s["n_items"] for s in subsets.values()) == 4 and "CIDEr" in next(iter(subsets.values()))
    qa = metrics["qa"]
    assert qa["n_items"] >= 4 * 5 and 0 <= qa["exact_match"] <= 1  # 4 direction + 1 count + 1-3 colour each
    assert set(qa["by_kind"]) == {"direction", "pole", "count", "colour", "size"}
    assert "question answering: exact match" in done.stdout
    # Each headline number with the interval another draw of the 4 test panoramas could move it in.
    intervals = metrics["intervals"]
    assert intervals["panoramas"] == 4 and intervals["resamples"] == 1000
    kinds = {f"QA_{kind}": numbers["exact_match"] for kind, numbers in qa["by_kind"].items()}
    shown = {"CIDEr": metrics["model"]["CIDEr"], "image_gap": dependence["gap"], "QA": qa["exact_match"], **kinds}
    shown["answer_loss"] = dependence["answer_loss"]
    assert set(intervals["bounds"]) == set(shown)
    for name, value in shown.items():
        low, high = intervals["bounds"][name]
        assert low - 1e-4 <= value <= high + 1e-4, (name, value, low, high)
    low, high = intervals["bounds"]["CIDEr"]
    assert f"model CIDEr {metrics['model']['CIDEr']:.4f} [{low:.4f}, {high:.4f}]: 95% intervals" in done.stdout
    # The items' own numbers, which launch/compare.py pairs, average to the reported ones.
    with open(out / "item_scores.csv", newline="") as f:
        scored = list(csv.DictReader(f))
    captions, questions = [r for r in scored if r["set"] == "captions"], [r for r in scored if r["set"] == "qa"]
    assert [(r["image"], r["query"]) for r in captions] == [(r["image"], r["query"]) for r in rows]

    def mean(rows, column):
        return sum(float(r[column]) for r in rows) / len(rows)

    assert mean(captions, "CIDEr") == pytest.approx(metrics["model"]["CIDEr"], abs=1e-9)
    assert mean(captions, "answer_loss") == pytest.approx(dependence["answer_loss"], abs=1e-4)
    assert mean(captions, "answer_loss_images_rotated") == pytest.approx(
        dependence["answer_loss_images_rotated"], abs=1e-4
    )
    assert len(questions) == qa["n_items"] and mean(questions, "correct") == pytest.approx(qa["exact_match"], abs=1e-4)
    itself = run_cli("compare.py", str(out), str(out))
    assert itself.returncode == 0 and "[+0.0000, +0.0000]" in itself.stdout, itself.stderr


def test_eval_of_a_run_dir_takes_its_last_stage(smoke_run):
    run_dir, _ = smoke_run
    done = run_cli("eval.py", f"checkpoint_dir={run_dir}", "debug=smoke", "baselines=false", "meteor=false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "evaluating its last completed stage, finetune" in done.stdout
    # meteor=false: no Java VM for METEOR, and the metrics say why it is missing
    metrics = json.loads((run_dir / "finetune" / "eval" / "synthpano-test" / "metrics.json").read_text())
    assert "METEOR" not in metrics["model"] and {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(metrics["model"])
    assert metrics["unavailable"]["METEOR"] == "switched off (meteor=false)"
    assert "METEOR not computed: switched off (meteor=false)" in done.stdout


def test_a_damaged_weight_file_is_refused_by_name(smoke_run, tmp_path):
    import shutil

    run_dir, _ = smoke_run
    copy = tmp_path / "resampler"
    shutil.copytree(run_dir / "resampler", copy)
    data = bytearray((copy / layout.WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (copy / layout.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="model.safetensors: sha256"):
        load_from_run(copy)


def test_load_from_run_reproduces_the_saved_model_exactly(smoke_config, tmp_path):
    cfg = resolved_container(smoke_config())
    batch = training_batch(cfg)
    previous = None
    for stage in ("vision", "resampler", "finetune"):
        result = run_stage(cfg, stage, tmp_path, previous)
        rebuilt = load_from_run(result.stage_dir)
        assert torch.equal(answer_logits(result.model, batch), answer_logits(rebuilt, batch)), stage
        previous = result.stage_dir


def test_freeze_matrix_and_lora_training(smoke_config, tmp_path):
    cfg = resolved_container(smoke_config("stages=[resampler,finetune]", "stage.finetune.max_steps=3"))
    resampler = run_stage(cfg, "resampler", tmp_path, None)
    assert all(not p.requires_grad for p in resampler.model.llm.parameters())
    assert all(not p.requires_grad for p in resampler.model.vision.parameters())
    assert not any(p.requires_grad for p in resampler.model.overlap_head.parameters())
    finetune = run_stage(cfg, "finetune", tmp_path, resampler.stage_dir)
    trainable = {n for n, p in finetune.model.named_parameters() if p.requires_grad}
    assert any(".lora_" in n for n in trainable)
    trained_whole = {n for n in trainable if ".modules_to_save." in n}
    assert {n.split(".modules_to_save.")[0].rsplit(".", 1)[-1] for n in trained_whole} == {"q_norm", "k_norm"}
    assert all(
        n.startswith(("resampler.", "projector.", "stitch.")) or ".lora_" in n or n in trained_whole for n in trainable
    )
    assert any(n.startswith("stitch.") for n in trainable)  # view position encoding and separators
    # LoRA B starts at zero: after training it must have moved, so gradients reached it.
    adapter = load_file(str(finetune.stage_dir / layout.ADAPTER_DIR / layout.ADAPTER_WEIGHTS))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    # The query/key norm gains start at one and are saved whole in the adapter: they moved too.
    gains = [v for k, v in adapter.items() if k.endswith(("q_norm.weight", "k_norm.weight"))]
    assert len(gains) == 4 and all(not torch.equal(v, torch.ones_like(v)) for v in gains)


def test_the_adapter_dir_is_a_standard_peft_adapter(smoke_config, tmp_path):
    """adapter/ holds peft's own adapter_config.json next to the weights, so PeftModel.from_pretrained
    on a fresh copy of the base LLM gives the trained LLM (other tools can use it without us)."""
    from peft import PeftModel

    from vlm_resampler.models.backbones import load_language_model

    cfg = resolved_container(smoke_config("stages=[finetune]", "stage.finetune.max_steps=2"))
    finetune = run_stage(cfg, "finetune", tmp_path, None)
    adapter_dir = finetune.stage_dir / layout.ADAPTER_DIR
    assert json.loads((adapter_dir / layout.ADAPTER_CONFIG).read_text())["r"] == cfg["stage"]["finetune"]["lora"]["r"]
    base = load_language_model(cfg["backbone"]["language_model"]["name_or_path"])
    peft_llm = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    trained = finetune.model.llm.eval()
    ids = torch.tensor([[151644, 872, 198, 3838, 374, 389, 279, 2115, 30, 151645]])
    with torch.no_grad():
        assert torch.equal(peft_llm(input_ids=ids).logits, trained(input_ids=ids).logits)
        with peft_llm.disable_adapter():  # and the adapter is what makes the difference
            assert not torch.equal(peft_llm(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_untrusted_target_in_a_run_dir_is_refused_without_calling_it(smoke_run, tmp_path, monkeypatch):
    import os
    import shutil

    run_dir, _ = smoke_run
    copy = tmp_path / "resampler"
    shutil.copytree(run_dir / "resampler", copy)
    meta = json.loads((copy / layout.METADATA).read_text())
    meta["model"]["resampler"] = {"_target_": "os.system", "command": "touch pwned"}
    (copy / layout.METADATA).write_text(json.dumps(meta))
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    with pytest.raises(ValueError, match="os.system.*not allowed"):
        load_from_run(copy)
    assert not calls


def test_a_finished_stage_is_freed_before_the_next_one_starts(smoke_config, tmp_path, monkeypatch):
    """A stage's model, Trainer and optimizer hold reference cycles; left to the garbage collector,
    on a GPU they would share the device with the next stage (or eval_after's process)."""
    import gc
    import weakref

    from vlm_resampler.training import run

    finished, alive_at_start = [], []
    original = run.run_stage

    def recorded(*args, **kwargs):
        alive_at_start.append([ref() is not None for ref in finished])
        result = original(*args, **kwargs)
        finished.append(weakref.ref(result.model))
        return result

    monkeypatch.setattr(run, "run_stage", recorded)
    gc.collect()
    gc.disable()  # what is freed here, run_training freed
    try:
        run.run_training(smoke_config("stages=[resampler,finetune]"), tmp_path / "run")
        alive_at_end = [ref() is not None for ref in finished]
    finally:
        gc.enable()
    assert alive_at_start == [[], [False]] and alive_at_end == [False, False]


def test_a_stage_out_of_gpu_memory_ends_in_one_line_naming_the_memory_plan(smoke_config, tmp_path, monkeypatch, capsys):
    from vlm_resampler.errors import OutOfGpuMemory
    from vlm_resampler.training import run

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nGPU 0 has a total capacity ...")

    monkeypatch.setattr(run, "run_stage", out_of_memory)
    run_dir = tmp_path / "run"
    with pytest.raises(OutOfGpuMemory) as err:
        run.run_training(smoke_config("stages=[resampler,finetune]"), run_dir)
    gpu_mem = (
        f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f}" if torch.cuda.is_available() else "<GiB>"
    )
    assert str(err.value).startswith(
        "stage resampler ran out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB.)\n"
        f"  `python launch/inspect.py {run_dir} --gpu-mem {gpu_mem}` plans each stage's peak memory"
    )
    status = json.loads((run_dir / layout.STATUS).read_text())
    assert status["status"] == "failed" and (run_dir / layout.TRACEBACK).is_file()
    # the command it names works on the failed run's directory
    code, out = inspect_in_process(capsys, str(run_dir), "--gpu-mem", "80")
    assert code == 0 and out.count("largest batch that fits") == 2
