#!/usr/bin/env python
"""Benchmark the CPU selective scan against the references and mambapy's parallel scan.

    python launch/bench_scan.py --quick                    # small size only, about a minute or two
    nice python launch/bench_scan.py                       # both sizes, 1 and 2 threads (10+ minutes)
    python launch/bench_scan.py --wait-idle 300            # wait for other load to settle per case

Variants, all with the same softplus / delta_bias / D skip / z gating around the scan:
  ours       vlm_resampler.ops.scan_cpu.selective_scan_cpu (chunked sequential scan, own backward)
  reference  vlm_resampler.ops.selective_scan.selective_scan_reference (per-step loop, plain autograd;
             the ground truth of the tests and of the error columns)
  textbook   the mamba_ssm `selective_scan_ref` algorithm: exp(delta A) and delta B u materialised as
             [b, d, l, n], indexed per step under plain autograd (its backward is O(l^2 d n));
             runs only at --reference-threads, once per mode at the large size (~7 min, ~8 GB)
  mambapy    mambapy.mamba.MambaBlock.selective_scan: mambapy's Blelloch parallel scan (PScan)

Each (variant, size, threads) runs in its own subprocess, so that its peak memory can be read:
"extra MiB" = peak resident set size (getrusage ru_maxrss) minus the RSS once the inputs were
loaded. It counts everything the process touched, including memory the allocator kept after
freeing it; fwd is the peak after the no-grad forward runs, f+b the peak after the training runs.
"others" is the share of the machine's CPU time used by other processes while the case ran
(from /proc/stat minus this process's own CPU time): timings with others > ~0.1 are contended.
Progress goes to stderr; the table and the summary lines to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SIZES = {"small": dict(b=9, length=196, d=768, n=16), "large": dict(b=9, length=256, d=1792, n=64)}
VARIANTS = ("reference", "ours", "mambapy", "textbook")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- inputs


def make_inputs(b, length, d, n, seed=0):
    """Mamba-1 statistics: S4D-real A (perturbed), dt in [1e-3, 1e-1] through the softplus bias."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    dt = torch.exp(torch.rand(d, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = {
        "u": randn(b, d, length),
        "delta": 0.5 * randn(b, d, length),
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1) * torch.exp(0.2 * randn(d, n)),
        "B": randn(b, n, length),
        "C": randn(b, n, length),
        "D": torch.ones(d),
        "z": randn(b, d, length),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }
    return inputs, randn(b, d, length)  # the upstream gradient of y


# --------------------------------------------------------------------------------------- variants


def _gate(y, u, D, z):
    return (y + u * D[None, :, None]) * F.silu(z)


def textbook_scan(u, delta, A, B, C, D, z, delta_bias):
    """selective_scan_ref's algorithm: whole-sequence [b, d, l, n] decay and input, per-step indexing."""
    delta = F.softplus(delta + delta_bias[None, :, None])
    decay = torch.exp(delta[..., None] * A[None, :, None, :])  # [b, d, l, n]
    drive = (delta * u)[..., None] * B.transpose(1, 2)[:, None]  # [b, d, l, n]
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        state = decay[:, :, t] * state + drive[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    return _gate(torch.stack(ys, dim=2), u, D, z)


def mambapy_scan(u, delta, A, B, C, D, z, delta_bias):
    """mambapy's own selective_scan (pscan) in its [b, l, d] layout; it does not use `self`."""
    from mambapy.mamba import MambaBlock

    delta = F.softplus(delta + delta_bias[None, :, None])
    y = MambaBlock.selective_scan(
        None, u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D
    )
    return y.transpose(1, 2) * F.silu(z)


def scan_function(variant):
    if variant == "ours":
        from vlm_resampler.ops.scan_cpu import selective_scan_cpu as fn
    elif variant == "reference":
        from vlm_resampler.ops.selective_scan import selective_scan_reference as fn
    else:
        return {"textbook": textbook_scan, "mambapy": mambapy_scan}[variant]
    return lambda u, delta, A, B, C, D, z, delta_bias: fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias)


# ------------------------------------------------------------------------------ one case (worker)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (every field but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class OthersMeter:
    """Share of the machine's CPU time used by other processes between start() and stop()."""

    def start(self):
        self.wall, self.busy, self.own = time.perf_counter(), _busy_seconds(), sum(os.times()[:2])

    def stop(self) -> float:
        wall = time.perf_counter() - self.wall
        others = _busy_seconds() - self.busy - (sum(os.times()[:2]) - self.own)
        return max(0.0, others) / (os.cpu_count() * max(wall, 1e-9))


def _time(fn, repeats, budget_s):
    """Median wall time. A first call under a second is a discarded warm-up; slower cases are
    not repeated past the time budget (the 7-minute textbook run happens once)."""

    def once():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    times = [once()]
    if times[0] < 1.0:
        times = []
    while len(times) < repeats and sum(times) < budget_s:
        times.append(once())
    return statistics.median(times), len(times)


def run_case(variant, inputs_path, threads, repeats, budget_s, result_path):
    torch.set_num_threads(threads)
    data = torch.load(inputs_path, weights_only=True)
    inputs, grad_y = data["inputs"], data["grad_y"]
    fn = scan_function(variant)
    rss0, meter, report = _rss_mib(), OthersMeter(), {}

    def forward():
        with torch.no_grad():
            fn(*(inputs[k] for k in NAMES))

    meter.start()
    report["fwd_s"], report["fwd_runs"] = _time(forward, repeats, budget_s)
    report["fwd_others"], report["fwd_extra_mib"] = meter.stop(), _peak_mib() - rss0

    leaves = [inputs[k].clone().requires_grad_() for k in NAMES]
    last = {}

    def train():
        y = fn(*leaves)
        last["y"], last["grads"] = y.detach(), torch.autograd.grad(y, leaves, grad_y)

    meter.start()
    report["fb_s"], report["fb_runs"] = _time(train, repeats, budget_s)
    report["fb_others"], report["fb_extra_mib"] = meter.stop(), _peak_mib() - rss0
    torch.save({"y": last["y"], "grads": dict(zip(NAMES, last["grads"]))}, result_path)
    print(json.dumps(report))


# ------------------------------------------------------------------------------ driver (parent)


def _wait_for_quiet(max_wait_s, threshold=0.15):
    if max_wait_s <= 0:
        return
    meter, waited = OthersMeter(), 0.0
    while waited < max_wait_s:
        meter.start()
        time.sleep(2.0)
        load = meter.stop()
        if load < threshold:
            return
        if waited % 30 == 0:
            log(f"  waiting: other processes use {load:.0%} of the CPU")
        waited += 2.0
    log(f"  still busy after {max_wait_s:.0f} s; measuring anyway")


def spawn_case(variant, size, threads, inputs_path, workdir, args):
    result_path = workdir / f"{variant}-{size}-{threads}.pt"
    repeats = 2 if args.quick else args.repeats
    budget = 5.0 if args.quick else 20.0
    case = [variant, inputs_path, threads, repeats, budget, result_path]
    cmd = [sys.executable, __file__, "--case", *map(str, case)]
    _wait_for_quiet(args.wait_idle)
    log(f"running {variant:9s} {size} threads={threads}")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"case {variant} {size} threads={threads} failed:\n{done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    log(
        f"  fwd {report['fwd_s'] * 1e3:.1f} ms, fwd+bwd {report['fb_s'] * 1e3:.1f} ms, "
        f"extra MiB {report['fwd_extra_mib']:.0f} / {report['fb_extra_mib']:.0f}, "
        f"others {report['fwd_others']:.2f} / {report['fb_others']:.2f}"
    )
    return report, result_path


def compare(result_path, reference):
    """Max abs error of y and of the gradients; the gradient error also relative to max |grad|."""
    got = torch.load(result_path, weights_only=True)
    y_err = (got["y"] - reference["y"]).abs().max().item()
    g_abs = max((got["grads"][k] - reference["grads"][k]).abs().max().item() for k in NAMES)
    g_rel = max(
        (
            (got["grads"][k] - reference["grads"][k]).abs().max() / reference["grads"][k].abs().max().clamp_min(1e-30)
        ).item()
        for k in NAMES
    )
    return y_err, g_abs, g_rel


def wanted_cases(args):
    for size in ["small"] if args.quick else args.sizes:
        for threads in args.threads:
            # The reference first: every other variant's error columns are measured against it.
            for variant in sorted(args.variants, key=lambda v: v != "reference"):
                if variant == "textbook" and threads not in args.reference_threads:
                    continue
                yield size, threads, variant


def run_all(args):
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scan_") as tmp:
        workdir, inputs_paths, references = Path(tmp), {}, {}
        for size, threads, variant in wanted_cases(args):
            if size not in inputs_paths:
                inputs, grad_y = make_inputs(**SIZES[size])
                inputs_paths[size] = workdir / f"inputs-{size}.pt"
                torch.save({"inputs": inputs, "grad_y": grad_y}, inputs_paths[size])
            report, path = spawn_case(variant, size, threads, inputs_paths[size], workdir, args)
            if variant == "reference":
                references[size, threads] = torch.load(path, weights_only=True)
            ref = references.get((size, threads))
            errors = compare(path, ref) if ref is not None else (float("nan"),) * 3
            errors = dict(zip(("y_err", "g_abs", "g_rel"), errors))
            rows.append(dict(size=size, threads=threads, variant=variant, **report, **errors))
            log(f"  max abs err y {errors['y_err']:.2e}, grads {errors['g_abs']:.2e} (relative {errors['g_rel']:.2e})")
            if variant != "reference":
                path.unlink()
    return rows


# ------------------------------------------------------------------------------------- reporting


def _cell(rows, size, threads, variant, key):
    for row in rows:
        if (row["size"], row["threads"], row["variant"]) == (size, threads, variant):
            return row[key]
    return None


def print_table(rows):
    print(
        "| size | thr | variant | fwd ms (runs) | f+b ms (runs) | ref/x fwd | ref/x f+b | extra MiB fwd / f+b "
        "| max abs err y | max abs err grads | max rel err grads | others fwd / f+b |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref_fwd = _cell(rows, r["size"], r["threads"], "reference", "fwd_s")
        ref_fb = _cell(rows, r["size"], r["threads"], "reference", "fb_s")
        ratio = lambda ref, x: f"{ref / x:.1f}x" if ref else "-"  # noqa: E731
        print(
            f"| {r['size']} | {r['threads']} | {r['variant']} | {r['fwd_s'] * 1e3:.1f} ({r['fwd_runs']}) "
            f"| {r['fb_s'] * 1e3:.1f} ({r['fb_runs']}) | {ratio(ref_fwd, r['fwd_s'])} | {ratio(ref_fb, r['fb_s'])} "
            f"| {r['fwd_extra_mib']:.0f} / {r['fb_extra_mib']:.0f} | {r['y_err']:.2e} | {r['g_abs']:.2e} | {r['g_rel']:.2e} "
            f"| {r['fwd_others']:.2f} / {r['fb_others']:.2f} |"
        )


def speedups(rows, other, key="fb_s"):
    """other's time / ours, for every (size, threads) where both ran."""
    out = {}
    for r in rows:
        if r["variant"] == "ours":
            theirs = _cell(rows, r["size"], r["threads"], other, key)
            if theirs is not None:
                out[r["size"], r["threads"]] = theirs / r[key]
    return out


def print_summary(rows):
    print()
    for other in ("reference", "textbook", "mambapy"):
        for key, label in (("fwd_s", "fwd"), ("fb_s", "fwd+bwd")):
            cases = speedups(rows, other, key)
            if cases:
                listed = ", ".join(f"{s}/{t}T {v:.1f}x" for (s, t), v in cases.items())
                print(f"ours vs {other} {label}: {listed}")
    # The reference is the textbook recurrence (as mamba_ssm's selective_scan_ref); our own
    # per-step loop is a much stronger baseline, reported too so nobody mistakes one for the other.
    print(f"min fwd+bwd speedup vs our per-step loop (reference variant): {_min_text(speedups(rows, 'reference'))}")
    textbook = speedups(rows, "textbook")
    print(f"min fwd+bwd speedup: {_min_text(textbook) if textbook else 'n/a (textbook variant not run)'}")
    print(f"min fwd+bwd speedup vs mambapy: {_min_text(speedups(rows, 'mambapy'))}")


def _min_text(cases):
    return f"{min(cases.values()):.1f}x" if cases else "n/a (not run)"


# ---------------------------------------------------------------------------------------- main


def _int_list(text):
    return [int(x) for x in text.split(",") if x]


def _str_list(text):
    return [x for x in text.split(",") if x]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small size only, 2 repeats per mode")
    parser.add_argument(
        "--sizes", type=_str_list, default=list(SIZES), help="comma separated, from small,large (default both)"
    )
    parser.add_argument(
        "--threads", type=_int_list, default=[1, 2], help="torch thread counts, comma separated (default 1,2)"
    )
    parser.add_argument(
        "--reference-threads",
        type=_int_list,
        default=[2],
        help="thread counts at which the slow textbook reference runs (default 2: its large fwd+bwd takes ~7 min)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per mode when a run is under a second (default 5)"
    )
    parser.add_argument("--variants", type=_str_list, default=list(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each case, wait up to this many seconds for other processes' CPU use to drop below 15%%",
    )
    parser.add_argument("--case", nargs=6, help=argparse.SUPPRESS)  # internal: one case in a subprocess
    args = parser.parse_args(argv)
    if set(args.sizes) - set(SIZES):
        parser.error(f"--sizes must be from {', '.join(SIZES)}; got {','.join(args.sizes)}")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or "reference" not in args.variants or "ours" not in args.variants:
        parser.error(
            f"--variants must include reference and ours, from {', '.join(VARIANTS)}; got {','.join(args.variants)}"
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.case:
        variant, inputs_path, threads, repeats, budget, result_path = args.case
        run_case(variant, inputs_path, int(threads), int(repeats), float(budget), result_path)
        return
    log(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    rows = run_all(args)
    print_table(rows)
    print_summary(rows)


if __name__ == "__main__":
    main()
