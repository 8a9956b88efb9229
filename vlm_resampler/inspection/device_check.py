"""launch/gpu_check.py: the checks that need a GPU, as one prepared command that writes a JSON
report (under 8 minutes on one lent GPU). Without a GPU it runs the same parts on the CPU, smaller,
so that the script itself is tested here (tests/test_gpu_check.py); the report says which device.

Parts (each recorded with its seconds, and its error if it failed; one failing part does not stop
the others):
- device: torch, CUDA, the device's name, memory and bf16 support, and which `java` eval uses;
- scan: our chunked selective scan (what every device runs without mamba-ssm) against the
  per-step reference on the device, values and every gradient;
- mamba_ssm: its CUDA kernel against our scan on the same inputs, where mamba-ssm is installed;
  where it is not, why (on a lent GPU, .ci/gpu-check compiles it and runs this part again);
- smoke: launch/train.py debug=smoke through all three stages in bf16 (fp32 where the device
  cannot run bf16), then launch/eval.py on its last stage, on the same device in the same precision;
- real_size: SigLIP-base + Qwen3-0.6B at full size (random weights) in the resampler stage: seconds
  per step after the first, tokens per second, the model FLOPs utilisation against the device's
  peak (H100 / H200 bf16 dense: 989 TFLOPS; none elsewhere), the peak memory against inspect's
  memory plan, and the process's own host memory after the step against inspect's host plan
  (inspection/host_memory.py: its runtime allowance is what this measures; the backbones here
  store float32, mapped from their files).
A comparison outside its tolerance fails the check like a part that raised."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense, SXM; per the vendor's data sheets
FLOAT32_TOLERANCE = 2e-4


def timed(part):
    """Run part() -> dict; add its seconds, or its error and traceback tail when it raised."""
    start = time.perf_counter()
    try:
        result = {"ok": True} | part()
    except Exception as err:  # a part's failure is its result; the other parts still run
        result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
    return result | {"seconds": round(time.perf_counter() - start, 1)}


def device_info() -> dict:
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "java": shutil.which("java"),  # eval's PTB tokenizer; on a lent GPU, the JRE .ci/gpu-kit carries
    }
    if not torch.cuda.is_available():
        return info | {"device": "cpu", "name": platform.processor() or platform.machine()}
    props = torch.cuda.get_device_properties(0)
    return info | {
        "device": "cuda",
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "bf16": torch.cuda.is_bf16_supported(),
        "count": torch.cuda.device_count(),
    }


def run_script(script: str, *args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "launch" / script), *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"{script} exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return done


def smoke(work: Path, precision: str) -> dict:
    run = work / "smoke"
    run_script("train.py", "debug=smoke", f"precision={precision}", f"hydra.run.dir={run}", "experiment.name=smoke",
               cwd=work, timeout=300)  # fmt: skip
    # METEOR scores on the CPU, alike everywhere (tested here); its 66 MB of tables do not travel to
    # a lent GPU (.ci/gpu-kit).
    run_script("eval.py", f"checkpoint_dir={run}/finetune", "debug=smoke", "meteor=false", f"precision={precision}",
               cwd=work, timeout=300)  # fmt: skip
    losses = {
        s: json.loads((run / s / "train_metrics.json").read_text())["final_loss"]
        for s in ("vision", "resampler", "finetune")
    }
    metrics = json.loads(next((run / "finetune" / "eval").glob("*/metrics.json")).read_text())
    generation = metrics["generation"]
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # eval's device=auto
    if generation["device"].split(":")[0] != expected or generation["precision"] != precision:
        raise RuntimeError(
            f"eval ran on {generation['device']} in {generation['precision']}, not {expected} in {precision}"
        )
    return {
        "precision": precision,
        "final_losses": losses,
        "eval_CIDEr": metrics["model"]["CIDEr"],
        "eval_device": generation["device"],
        "eval_tokens_per_s": generation["tokens_per_s"],
    }


def steady_step_seconds(train_log: Path) -> tuple[float, int]:
    """Seconds per step after the first (CUDA's and the allocator's warm-up), from the stage's log
    (logging_steps=1: a line per step, with the seconds since training began); and how many steps
    that timed."""
    lines = [json.loads(line) for line in train_log.read_text().splitlines() if line.strip()]
    timed = [(r["step"], r["seconds"]) for r in lines if "loss" in r]
    (first_step, first_seconds), (last_step, last_seconds) = timed[0], timed[-1]
    if last_step == first_step:
        raise ValueError(f"{train_log}: one logged step; the steady time per step needs at least two")
    return (last_seconds - first_seconds) / (last_step - first_step), last_step - first_step


def host_memory_now() -> dict:
    """The process's own (anonymous) resident memory, and its peak resident set (file-backed
    pages too: the mapped checkpoints), in GiB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "VmHWM"):
            fields[key] = round(int(value.split()[0]) * 1024 / 2**30, 2)
    return {"host_rss_anon_gib": fields.get("RssAnon"), "host_peak_rss_gib": fields.get("VmHWM")}


def real_size(work: Path, precision: str, batch_size: int, steps: int) -> dict:
    """The resampler stage of SigLIP-base + Qwen3-0.6B (random weights), timed in this process."""
    from vlm_resampler.config.preflight import compose
    from vlm_resampler.inspection.counts import inspect_source
    from vlm_resampler.inspection.sources import source_from_overrides
    from vlm_resampler.training.run import resolved_container, run_stage

    overrides = [
        "backbone=random_siglip_base_qwen3_0_6b", "resampler=perceiver", "stages=[resampler]", f"precision={precision}",
        "data.num_train=64", "stage.resampler.object_code_warmup_steps=0", f"stage.resampler.batch_size={batch_size}",
        f"stage.resampler.max_steps={steps}", "stage.resampler.logging_steps=1", "stage.resampler.save_steps=1000",
    ]  # fmt: skip
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
    report = inspect_source(source_from_overrides(overrides), gpu_gib)
    plan = report["memory"]["resampler"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = run_stage(resolved_container(compose("train", overrides)), "resampler", work / "real_size", None)
    seconds_per_step, timed_steps = steady_step_seconds(result.stage_dir / "train_log.jsonl")
    tokens = batch_size * (report["tokens"]["tokens_per_image"] + 80)  # + prompt and answer (about 80)
    # The LLM is frozen: forward (2 N T) and the gradient to its inputs (2 N T), no weight gradients.
    flops = 4 * report["parameters"]["llm"] * tokens
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    out = {
        "batch_size": batch_size,
        "steps": steps,
        "timed_steps": timed_steps,
        "seconds_per_step": round(seconds_per_step, 3),
        "tokens_per_second": round(tokens / seconds_per_step, 1),
        "model_tflops_per_second": round(flops / seconds_per_step / 1e12, 3),
        "mfu": round(flops / seconds_per_step / peak, 4) if peak and precision == "bf16" else None,
        "planned_peak_gib": round(plan["peak"] / 2**30, 2),
        "planned_host_per_process_gib": round(report["host_memory"]["per_process"] / 2**30, 2),
    } | host_memory_now()
    if torch.cuda.is_available():
        # The plan's peak includes a 1 GiB allowance for the CUDA context and the allocator's reserve;
        # allocated excludes both, reserved the context only: the plan should sit a little above reserved.
        reserved = torch.cuda.max_memory_reserved()
        out["measured_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["measured_peak_reserved_gib"] = round(reserved / 2**30, 2)
        out["planned_over_reserved"] = round(plan["peak"] / reserved, 2)
    return out


def scan_inputs(batch: int, d_inner: int, d_state: int, length: int, device: str) -> dict:
    """Selective-scan inputs in the layout bimamba passes them, seeded (the same on every call)."""
    g = torch.Generator().manual_seed(0)
    b, d, n, length = batch, d_inner, d_state, length
    inputs = {
        "u": torch.randn(b, d, length, generator=g), "delta": torch.randn(b, d, length, generator=g) * 0.5,
        "A": -torch.rand(d, n, generator=g) - 0.5, "B": torch.randn(b, n, length, generator=g),
        "C": torch.randn(b, n, length, generator=g), "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, length, generator=g), "delta_bias": torch.randn(d, generator=g) * 0.1,
    }  # fmt: skip
    return {k: v.to(device) for k, v in inputs.items()}


def forward_backward(function, inputs: dict):
    """`function` on fresh leaves of `inputs` and a backward through it: (output, gradient of each input)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}  # own leaves, own grads
    y = function(**leaves, delta_softplus=True)  # explicit: mamba-ssm's selective_scan_fn defaults to False
    (y * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum().backward()
    return y.detach(), {k: v.grad for k, v in leaves.items()}


def compare_scans(device: str, tested, baseline) -> dict:
    """`tested` against `baseline` on the same inputs on `device`: outputs and the gradient of every input."""
    inputs = scan_inputs(2, 64, 16, 96, device)
    (y, grads), (y_ref, grads_ref) = forward_backward(tested, inputs), forward_backward(baseline, inputs)
    # Each difference relative to the largest magnitude of its reference.
    pairs = {"y": (y, y_ref)} | {f"grad_{k}": (grads[k], grads_ref[k]) for k in inputs}
    worst = {name: (a - b).abs().max().item() / (b.abs().max().item() or 1) for name, (a, b) in pairs.items()}
    return {"device": device, "max_differences": worst, "within_tolerance": max(worst.values()) < FLOAT32_TOLERANCE}


# One bimamba direction at the default resampler (hidden 1024, expand 1.75, d_state 64) over
# SigLIP-base-224's 14 x 14 tokens, for 8 views.
BIMAMBA_SCAN = {"batch": 8, "d_inner": 1792, "d_state": 64, "length": 196}


def milliseconds_per_step(function, inputs: dict, repeats: int) -> float:
    """Forward and backward of `function` on `inputs`, after two warm-up steps, in ms per step."""
    cuda = next(iter(inputs.values())).is_cuda
    forward_backward(function, inputs), forward_backward(function, inputs)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        forward_backward(function, inputs)
    if cuda:
        torch.cuda.synchronize()
    return round(1000 * (time.perf_counter() - start) / repeats, 2)


def scan(device: str, timing_shape: dict | None = None) -> dict:
    """Our chunked scan (the path every device takes without mamba-ssm) against the per-step
    reference; with `timing_shape` (bimamba's size, on CUDA) also its time per step."""
    from vlm_resampler.ops import selective_scan as ops

    result = compare_scans(device, ops.selective_scan_cpu, ops.selective_scan_reference)
    if timing_shape:
        inputs = scan_inputs(**timing_shape, device=device)
        result["ms_per_step_at_bimamba_size"] = milliseconds_per_step(ops.selective_scan_cpu, inputs, repeats=5)
    return result


def compare_kernel(kernel, device: str, timing_shape: dict) -> dict:
    """A selective-scan kernel against our scan (values and gradients), and both timed at `timing_shape`."""
    from vlm_resampler.ops import selective_scan as ops

    result = compare_scans(device, kernel, ops.selective_scan_cpu)
    inputs = scan_inputs(**timing_shape, device=device)
    theirs = milliseconds_per_step(kernel, inputs, repeats=20)
    ours = milliseconds_per_step(ops.selective_scan_cpu, inputs, repeats=5)
    timing = {"mamba_ssm": theirs, "ours": ours, "ours_over_kernel": round(ours / theirs, 1)}
    return result | {"ms_per_step_at_bimamba_size": timing}


def mamba_ssm() -> dict:
    """mamba-ssm's CUDA kernel (what `selective_scan` runs on CUDA where it is installed) against our
    scan, and both timed at bimamba's size."""
    from vlm_resampler.ops import selective_scan as ops

    try:
        import mamba_ssm as package
    except ImportError as err:
        return {
            "installed": False,
            "why": f"mamba-ssm does not import ({err}); on a lent GPU, .ci/gpu-check compiles it from the "
            "source distribution .ci/gpu-kit carries, then runs this part again",
        }
    if ops._KERNEL is None or not torch.cuda.is_available():
        return {"installed": True, "version": package.__version__, "compared": False, "why": "no CUDA kernel here"}
    return {"installed": True, "version": package.__version__, "compared": True} | compare_kernel(
        ops._KERNEL, "cuda", BIMAMBA_SCAN
    )


PARTS = ("device", "scan", "mamba_ssm", "smoke", "real_size")


def run_all(out: Path, work: Path, quick: bool, only: tuple[str, ...] = PARTS) -> dict:
    """The parts in `only`, in order; the report is written after each, so a timeout leaves what was done."""
    cuda = torch.cuda.is_available()
    precision = "bf16" if (cuda and torch.cuda.is_bf16_supported()) else "fp32"
    parts = {
        "device": device_info,
        "scan": lambda: scan("cuda", BIMAMBA_SCAN) if cuda else scan("cpu"),
        "mamba_ssm": mamba_ssm,
        "smoke": lambda: smoke(work, precision),
        "real_size": lambda: real_size(work, precision, 8 if cuda else 1, (12 if quick else 40) if cuda else 2),
    }
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "on_gpu": cuda}
    for name in ("device", *(p for p in only if p != "device")):  # the device is always described
        print(f"gpu_check: {name} ...", flush=True)
        report[name] = timed(parts[name])
        out.write_text(json.dumps(report, indent=2))
    # A comparison that ran and disagreed fails the check like a part that raised.
    comparisons = [report[p] for p in ("scan", "mamba_ssm") if p in report and "within_tolerance" in report[p]]
    report["ok"] = all(report[p]["ok"] for p in PARTS if p in report) and all(
        c["within_tolerance"] for c in comparisons
    )
    out.write_text(json.dumps(report, indent=2))
    return report


def summary(report: dict) -> str:
    lines = [f"gpu_check on {report['device'].get('name', '?')} ({'GPU' if report['on_gpu'] else 'CPU only'}):"]
    for name in (p for p in PARTS[1:] if p in report):
        part = report[name]
        status = "ok" if part["ok"] else f"FAILED ({part['error']})"
        if "within_tolerance" in part:
            worst = max(part["max_differences"].values())
            status = f"{status}, {'within' if part['within_tolerance'] else 'OUTSIDE'} tolerance (worst {worst:.1e})"
        elif part.get("why"):
            status = f"{status}, not compared: {part['why']}"
        timing = part.get("ms_per_step_at_bimamba_size")
        if isinstance(timing, dict):
            status += f", {timing['mamba_ssm']} ms a step at bimamba's size (ours {timing['ours']} ms)"
        elif timing is not None:
            status += f", {timing} ms a step at bimamba's size"
        lines.append(f"  {name:10s} {status}, {part['seconds']} s")
    if report.get("smoke", {}).get("ok"):
        smoke_part = report["smoke"]
        lines.append(
            f"  smoke eval on {smoke_part['eval_device']} in {smoke_part['precision']}: "
            f"{smoke_part['eval_tokens_per_s']} generated tokens/s"
        )
    if report.get("real_size", {}).get("ok"):
        r = report["real_size"]
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"  real-size step {r['seconds_per_step']} s, {r['tokens_per_second']} tokens/s, MFU {mfu}")
        if "measured_peak_reserved_gib" in r:
            lines.append(
                f"  peak memory: planned {r['planned_peak_gib']} GiB, reserved {r['measured_peak_reserved_gib']} GiB"
                f" (allocated {r['measured_peak_allocated_gib']} GiB)"
            )
        lines.append(
            f"  host memory of the process: its own {r['host_rss_anon_gib']} GiB after the step, planned "
            f"{r['planned_host_per_process_gib']} GiB; peak resident {r['host_peak_rss_gib']} GiB with mapped files"
        )
    return "\n".join(lines)
