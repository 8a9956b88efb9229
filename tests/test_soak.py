"""Soak (issue 7.7): 20 consecutive `debug=smoke` trainings, each followed by an eval of that run,
in one process, through the same in-process functions launch/train.py and launch/eval.py call
(check_train_argv -> run_training, check_eval_argv -> evaluate_checkpoint). A model, optimizer,
data loader, tokenizer, scorer or file handle kept alive by one iteration shows as resident
memory or file descriptors that grow with the iteration count.

By hand, printing the curve (RSS and open fds after each iteration; also soak.json and soak.png
in the test's tmp dir, whose path is printed):

    nice -n 19 .venv/bin/python -m pytest -m slow tests/test_soak.py -s

SOAK_ITERATIONS=N changes the number of iterations (the bound checks need at least 6).
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

import pytest

ITERATIONS = int(os.environ.get("SOAK_ITERATIONS", "20"))
WARMUP = 3  # the first iterations fill caches that are built once per process (see the bound below)
# After the warm-up, resident memory may grow by at most this much over all later iterations.
# Why 150 MiB: the smoke model alone is 45 MiB of parameters (11.8 M of them trainable, so AdamW's
# state adds 90 MiB more), so keeping one model per iteration alive adds ~45 MiB x 17 = 765 MiB,
# and even one model every fourth iteration passes the bound; 150 MiB leaves room for Python's
# caches. RSS is read after glibc's malloc_trim(0): without it RSS counts heap pages that were freed
# but kept by the allocator, which jumped by up to 170 MiB between iterations (5 Dec 2026, CI:
# 856 -> 1029 MiB) while the trimmed RSS rose 2 MiB per iteration (492 -> 507 over 8).
RSS_BOUND_MIB = 150.0
FD_BOUND = 3  # open file descriptors: a leaked handle per iteration would add 17


def release_freed_heap() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim), so RSS counts what is held."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def rss_mib() -> float:
    gc.collect()
    release_freed_heap()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_modules() -> int:
    """torch.nn.Module objects still alive (after gc): a kept model shows here even when the
    allocator hides it in RSS."""
    import torch

    return sum(1 for o in gc.get_objects() if isinstance(o, torch.nn.Module))


def as_hydra_main(config_name: str, argv: list[str]):
    """The config a @hydra.main function receives for `argv`: composed with the hydra node, that
    node set as HydraConfig (eval reads the command line's overrides from it) and then removed."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vlm_resampler.config.preflight import compose

    cfg = compose(config_name, argv, with_hydra=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train_then_eval(run_dir: Path) -> None:
    """What `launch/train.py debug=smoke hydra.run.dir=RUN` and then
    `launch/eval.py --checkpoint-dir RUN debug=smoke` do, minus the @hydra.main wrapper."""
    import sys

    from vlm_resampler.cli import check_eval_argv, check_train_argv
    from vlm_resampler.evaluation.evaluate import evaluate_checkpoint
    from vlm_resampler.training.run import run_training

    # The hub decision is made once per process, before transformers is imported (conftest.py
    # sets HF_HUB_OFFLINE=1); a CLI process makes it in its first check, as the first iteration here.
    hub = "transformers" not in sys.modules
    train_argv = ["debug=smoke", "num_threads=1", f"hydra.run.dir={run_dir}"]
    check_train_argv(train_argv, configure_hub=hub)
    last = run_training(as_hydra_main("train", train_argv), run_dir)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"

    eval_argv = check_eval_argv([f"checkpoint_dir={last}", "debug=smoke", "num_threads=1"], configure_hub=False)
    results = evaluate_checkpoint(as_hydra_main("eval", eval_argv))
    assert results["n_items"] > 0


def write_curve(points: list[dict], out: Path) -> None:
    (out / "soak.json").write_text(json.dumps(points, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p["iteration"] for p in points]
    fig, rss_axis = plt.subplots(figsize=(7, 3.5))
    rss_axis.plot(x, [p["rss_mib"] for p in points], "o-", color="tab:blue")
    rss_axis.set_xlabel("iteration (train debug=smoke + eval)")
    rss_axis.set_ylabel("RSS (MiB)", color="tab:blue")
    fd_axis = rss_axis.twinx()
    fd_axis.plot(x, [p["fds"] for p in points], "s--", color="tab:orange")
    fd_axis.set_ylabel("open fds", color="tab:orange")
    rss_axis.axvline(WARMUP, color="grey", lw=0.8, ls=":")
    fig.suptitle("soak: memory and file descriptors per iteration")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=100)
    plt.close(fig)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_twenty_smoke_runs_and_evals_do_not_grow_memory_or_fds(tmp_path):
    assert ITERATIONS > WARMUP + 2, "SOAK_ITERATIONS is too small to measure growth after the warm-up"
    gc.collect()
    points = [{"iteration": 0, "rss_mib": round(rss_mib(), 1), "fds": open_fds(), "modules": 0, "seconds": 0.0}]
    print(f"\nsoak: {ITERATIONS} x (train debug=smoke + eval debug=smoke); curve in {tmp_path}/soak.json, soak.png")
    print(f"soak: iteration  0  RSS {points[0]['rss_mib']:8.1f} MiB  fds {points[0]['fds']:3d}  (before)", flush=True)
    for i in range(1, ITERATIONS + 1):
        started = time.perf_counter()
        train_then_eval(tmp_path / f"run{i:02d}")
        gc.collect()
        point = {
            "iteration": i,
            "rss_mib": round(rss_mib(), 1),
            "fds": open_fds(),
            "modules": live_modules(),
            "seconds": round(time.perf_counter() - started, 1),
        }
        points.append(point)
        print(
            f"soak: iteration {i:2d}  RSS {point['rss_mib']:8.1f} MiB  fds {point['fds']:3d}  modules {point['modules']:3d}  {point['seconds']:6.1f} s",
            flush=True,
        )
        write_curve(points, tmp_path)  # after each iteration: a killed soak still leaves its curve

    after = [p for p in points if p["iteration"] >= WARMUP]
    rss_growth = after[-1]["rss_mib"] - after[0]["rss_mib"]
    rss_peak_growth = max(p["rss_mib"] for p in after) - after[0]["rss_mib"]
    fd_growth = after[-1]["fds"] - after[0]["fds"]
    module_growth = after[-1]["modules"] - after[0]["modules"]
    total = sum(p["seconds"] for p in points)
    print(
        f"soak: after iteration {WARMUP}: RSS {rss_growth:+.1f} MiB (peak {rss_peak_growth:+.1f}, bound {RSS_BOUND_MIB}), "
        f"fds {fd_growth:+d} (bound {FD_BOUND}), live nn.Modules {module_growth:+d}; {total:.0f} s in all"
    )
    assert rss_peak_growth < RSS_BOUND_MIB, (
        f"resident memory grew {rss_peak_growth:.1f} MiB after the warm-up: {points}"
    )
    assert module_growth <= 0, f"torch.nn.Module objects outlive their iteration: {points}"
    assert fd_growth <= FD_BOUND, f"open file descriptors grew by {fd_growth} after the warm-up: {points}"
