"""Where an eval computes (evaluation/device.py): the GPU when the machine has one, else the CPU,
in float32 unless asked otherwise; a device or precision the machine lacks is refused before the
model loads, with one line saying why."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vlm_resampler.evaluation.device import (
    DeviceUnavailable,
    autocast,
    batch_to,
    check_eval_precision,
    describe,
    eval_device,
)
from vlm_resampler.training.precision import PrecisionUnavailable

from conftest import FINETUNE_RUN_TYPES, run_cli, train_smoke_finetune


def pretend_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_is_the_first_gpu_when_there_is_one_else_the_cpu(monkeypatch):
    pretend_gpus(monkeypatch, 0)
    assert eval_device("auto") == eval_device("cpu") == torch.device("cpu")
    pretend_gpus(monkeypatch, 2)
    assert eval_device("auto") == eval_device("cuda") == torch.device("cuda", 0)
    assert eval_device("cuda:1") == torch.device("cuda", 1)
    assert eval_device("cpu") == torch.device("cpu")


def test_a_gpu_the_machine_lacks_is_refused_saying_what_it_has(monkeypatch):
    pretend_gpus(monkeypatch, 0)
    with pytest.raises(DeviceUnavailable, match=r"^device=cuda: this machine has no CUDA GPU .*use device=auto"):
        eval_device("cuda")
    pretend_gpus(monkeypatch, 2)
    with pytest.raises(
        DeviceUnavailable, match=r"^device=cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1$"
    ):
        eval_device("cuda:2")


def test_fp16_on_the_cpu_is_refused_saying_why(monkeypatch):
    check_eval_precision("fp32", torch.device("cpu"))
    pretend_gpus(monkeypatch, 0)
    with pytest.raises(
        PrecisionUnavailable,
        match=r"^precision=fp16: mixed fp16 needs a CUDA GPU, and this machine has no GPU: use precision=fp32 here$",
    ):
        check_eval_precision("fp16", torch.device("cpu"))
    pretend_gpus(monkeypatch, 1)  # device=cpu on a GPU machine
    with pytest.raises(PrecisionUnavailable, match=r"and this run computes on the CPU \(device=cpu\)"):
        check_eval_precision("fp16", torch.device("cpu"))


def test_a_16_bit_precision_computes_under_autocast_and_fp32_does_not():
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (x @ x).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def test_a_batch_moves_its_tensors_and_keeps_its_other_values():
    moved = batch_to({"input_ids": torch.ones(2, 3), "facts": None, "images": ["a.png"]}, torch.device("meta"))
    assert moved["input_ids"].device.type == "meta" and moved["facts"] is None and moved["images"] == ["a.png"]
    assert describe(torch.device("cpu")) == "cpu"


@pytest.mark.cuda
def test_an_eval_on_the_gpu_scores_the_model_as_on_the_cpu(request, tmp_path):
    quick = ["debug=smoke", "meteor=false", "baselines=false", "qa=false", "report.enabled=false"]
    if not torch.cuda.is_available():
        run = tmp_path / "mlp"
        shutil.copytree(request.getfixturevalue("finetune_runs")["mlp"], run)  # the shared run is only read
        out = run / "finetune" / "eval" / "synthpano-test"
        done = run_cli("eval.py", f"checkpoint_dir={run / 'finetune'}", *quick, "device=cuda")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "device=cuda: this machine has no CUDA GPU" in done.stderr
        assert not out.exists(), "refused before the model loaded, it wrote nothing"
        return
    # On a lent GPU: one run of its own (the shared fixture trains two, and GPU time is short).
    run = train_smoke_finetune(tmp_path, "mlp", FINETUNE_RUN_TYPES["mlp"])
    out = run / "finetune" / "eval" / "synthpano-test"

    def evaluate(*settings: str) -> dict:
        done = run_cli("eval.py", f"checkpoint_dir={run / 'finetune'}", *quick, *settings)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((out / "metrics.json").read_text())

    on_gpu, on_cpu = evaluate("device=cuda"), evaluate("device=cpu")
    assert on_gpu["generation"]["device"].startswith("cuda:0 (") and on_cpu["generation"]["device"] == "cpu"
    # The same float32 model: the same answer loss up to the order of the GPU's sums.
    for key in ("answer_loss", "answer_loss_images_rotated"):
        assert on_gpu["image_dependence"][key] == pytest.approx(on_cpu["image_dependence"][key], rel=1e-3), key
    in_bf16 = evaluate("device=cuda", "precision=bf16")
    assert in_bf16["generation"]["precision"] == "bf16"
    assert in_bf16["image_dependence"]["answer_loss"] == pytest.approx(
        on_cpu["image_dependence"]["answer_loss"], rel=5e-2
    )


def test_an_eval_out_of_gpu_memory_ends_in_one_line_saying_what_lowers_it(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from vlm_resampler.config.preflight import compose
    from vlm_resampler.errors import OutOfGpuMemory
    from vlm_resampler.evaluation import evaluate

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB.\nGPU 0 has a total capacity ...")

    # A GPU too small for the model: moving it there fails (the checkpoint is not what this is about).
    pretend_gpus(monkeypatch, 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA T4")
    monkeypatch.setattr(evaluate, "resolve_checkpoint_dir", lambda path: path)
    monkeypatch.setattr(evaluate, "user_settings", lambda cfg: None)
    monkeypatch.setattr(
        evaluate, "load_stage", lambda *a, **k: SimpleNamespace(model=SimpleNamespace(to=out_of_memory))
    )
    cfg = compose("eval", [f"checkpoint_dir={tmp_path}", "batch_size=8", "meteor=false"])
    with pytest.raises(OutOfGpuMemory) as err:
        evaluate.evaluate_checkpoint(cfg)
    assert str(err.value) == (
        "the eval ran out of memory on cuda:0 (NVIDIA T4) (CUDA out of memory. Tried to allocate 9.00 GiB.): lower "
        "batch_size (it is 8), or evaluate in precision=bf16, or on device=cpu"
    )
