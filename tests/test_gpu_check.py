"""launch/gpu_check.py (inspection/device_check.py): the GPU checks as one command. Here, without a
GPU, its CPU parts run (slow tier); the scan comparison finds a wrong scan, and a failing part is
recorded without stopping the others."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from vlm_resampler.inspection import device_check

from conftest import REPO_ROOT, run_cli


def test_the_scan_check_passes_our_scan_and_catches_a_wrong_one(monkeypatch):
    assert device_check.scan("cpu")["within_tolerance"]
    from vlm_resampler.ops import selective_scan as ops

    right = ops.selective_scan_cpu
    monkeypatch.setattr(ops, "selective_scan_cpu", lambda **kw: right(**kw) * 1.001)
    result = device_check.scan("cpu")
    assert not result["within_tolerance"] and result["max_differences"]["y"] > 1e-4


def test_a_kernel_with_mamba_ssms_signature_is_compared_and_timed_as_on_a_gpu():
    # mamba-ssm's selective_scan_fn takes D=None and delta_softplus=False by default (ours: True);
    # this is the GPU path of the mamba_ssm part, run here on the CPU at a small size.
    from vlm_resampler.ops import selective_scan as ops

    def mamba_like(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        return ops.selective_scan_cpu(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)

    small = {"batch": 2, "d_inner": 16, "d_state": 4, "length": 20}
    result = device_check.compare_kernel(mamba_like, "cpu", small)
    timing = result["ms_per_step_at_bimamba_size"]
    assert result["within_tolerance"] and timing["mamba_ssm"] > 0 and timing["ours"] > 0
    assert device_check.scan("cpu", small)["ms_per_step_at_bimamba_size"] > 0
    summary = device_check.summary(
        {"device": {"name": "x"}, "on_gpu": True, "mamba_ssm": {"ok": True, **result, "seconds": 1}}
    )
    assert f"{timing['mamba_ssm']} ms a step at bimamba's size (ours {timing['ours']} ms)" in summary


def test_a_scan_step_is_timed_after_warm_up():
    from vlm_resampler.ops import selective_scan as ops

    calls = []

    def counted(**inputs):
        calls.append(1)
        return ops.selective_scan_cpu(**inputs)

    inputs = device_check.scan_inputs(1, 8, 4, 16, "cpu")
    assert device_check.milliseconds_per_step(counted, inputs, repeats=3) > 0 and len(calls) == 5


def test_the_step_time_leaves_out_the_first_step(tmp_path):
    log = tmp_path / "train_log.jsonl"
    lines = [{"step": 1, "loss": 3.0, "seconds": 9.0}, {"step": 2, "loss": 2.9, "seconds": 9.5}]
    lines += [{"step": 4, "loss": 2.7, "seconds": 10.5}, {"step": 4, "train_runtime": 10.6, "seconds": 10.6}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert device_check.steady_step_seconds(log) == (0.5, 3)  # (10.5 - 9.0) / (4 - 1): warm-up left out
    log.write_text(json.dumps(lines[0]) + "\n")
    with pytest.raises(ValueError, match="one logged step"):
        device_check.steady_step_seconds(log)


def test_a_scan_that_disagrees_fails_the_whole_check_and_parts_can_be_chosen(tmp_path, monkeypatch):
    from vlm_resampler.ops import selective_scan as ops

    right = ops.selective_scan_cpu
    monkeypatch.setattr(ops, "selective_scan_cpu", lambda **kw: right(**kw) * 1.001)
    report = device_check.run_all(tmp_path / "r.json", tmp_path, quick=True, only=("scan",))
    assert set(report) == {"started", "on_gpu", "device", "scan", "ok"}
    assert report["scan"]["ok"] and not report["scan"]["within_tolerance"] and report["ok"] is False
    assert "java" in report["device"]  # where eval's tokenizer runs from (the kit's JRE on a lent GPU)


def test_the_command_line_refuses_an_unknown_part_with_exit_2(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "launch" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.PARTS == device_check.PARTS  # the script's copy (checked before torch loads)
    done = run_cli("gpu_check.py", "--parts", "scan,warp", cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'scan,warp': expected a comma-separated list from device,scan,mamba_ssm,smoke,real_size" in done.stderr


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
    assert report["smoke"]["eval_device"].split(":")[0] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "smoke eval on " in done.stdout
    real = report["real_size"]
    assert real["seconds_per_step"] > 0 and real["tokens_per_second"] > 0 and real["planned_peak_gib"] > 2.5
    # Its backbones store float32 (mapped): the host plan is the runtime allowance, against the process's own memory.
    assert real["planned_host_per_process_gib"] == 2.0 and 0 < real["host_rss_anon_gib"] < real["host_peak_rss_gib"]
    assert "host memory of the process: its own" in done.stdout
    assert "report written to" in done.stdout and "real-size step" in done.stdout


SETUP_WITH_ARCHITECTURES = """\
cc_flag = []
if True:
    cc_flag.append("-gencode")
    cc_flag.append("arch=compute_80,code=sm_80")
    if version >= 11.8:
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_90,code=sm_90")
    if version >= 12.8:
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_100,code=sm_100")
"""


def test_mamba_setup_is_cut_to_one_architecture_and_stays_valid_python(tmp_path):
    spec = importlib.util.spec_from_file_location("mamba_one_arch", REPO_ROOT / ".ci" / "mamba_one_arch.py")
    one_arch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(one_arch)

    cut = one_arch.keep_one_architecture(SETUP_WITH_ARCHITECTURES, "90")
    flags = {}
    exec(compile(cut, "setup.py", "exec"), {"version": 13.0}, flags)  # the emptied `if` block still parses
    assert flags["cc_flag"] == ["-gencode", "arch=compute_90,code=sm_90"]
    with pytest.raises(ValueError, match=r"0 -gencode pairs for sm_89 \(expected 1\); it lists \['80', '90', '100'\]"):
        one_arch.keep_one_architecture(SETUP_WITH_ARCHITECTURES, "89")
    setup = tmp_path / "setup.py"
    setup.write_text(SETUP_WITH_ARCHITECTURES)
    assert one_arch.main([str(setup), "100"]) == 0 and "sm_90" not in setup.read_text()
