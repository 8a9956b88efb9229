"""launch/gpu_check.py (inspection/device_check.py): the GPU checks as one command. Here, without a
GPU, its CPU parts run (slow tier); the scan comparison finds a wrong scan, and a failing part is
recorded without stopping the others."""

from __future__ import annotations

import json

import pytest
import torch

from vlm_resampler.inspection import device_check

from conftest import run_cli


def test_the_scan_check_passes_our_scan_and_catches_a_wrong_one(monkeypatch):
    assert device_check.scan("cpu")["within_tolerance"]
    from vlm_resampler.ops import selective_scan as ops

    right = ops.selective_scan
    monkeypatch.setattr(ops, "selective_scan", lambda **kw: right(**kw) * 1.001)
    result = device_check.scan("cpu")
    assert not result["within_tolerance"] and result["max_differences"]["y"] > 1e-4


def test_a_failing_part_is_recorded_with_its_error_and_the_next_parts_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such device")

    monkeypatch.setattr(device_check, "smoke", broken)
    monkeypatch.setattr(device_check, "real_size", lambda *a: {"seconds_per_step": 1.0})
    report = device_check.run_all(tmp_path / "r.json", tmp_path, quick=True)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["smoke"]["ok"] is False and saved["smoke"]["error"] == "RuntimeError: no such device"
    assert saved["real_size"]["ok"] and saved["scan"]["ok"] and report["ok"] is False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gpu_check_runs_its_cpu_parts_here_and_writes_the_report(tmp_path):
    done = run_cli("gpu_check.py", "--out", str(tmp_path / "gpu_check.json"), "--quick", cwd=tmp_path, timeout=800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["on_gpu"] == torch.cuda.is_available() and report["ok"]
    assert report["scan"]["within_tolerance"] and report["smoke"]["final_losses"]["finetune"] > 0
    real = report["real_size"]
    assert real["seconds_per_step"] > 0 and real["tokens_per_second"] > 0 and real["planned_peak_gib"] > 2.5
    assert "report written to" in done.stdout and "real-size step" in done.stdout
