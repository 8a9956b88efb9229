"""Train a pretrained backbone's build in a child process on one pinned float path, so that every
x86-64 machine with AVX2 builds the same bytes from the same recipe.

Why: a build trains for thousands of steps, and floats summed in another order compound. Measured
8 Dec 2026 on one machine (docs/grounding.md, "Builds differ between machines"): the tower built on
its native path (AVX-512), with ATen's kernels pinned to AVX2, with MKL and oneDNN pinned too, and
on 1 thread instead of 2 came out as four different models, held-out shape accuracy 0.87 to 0.92.
Which instruction set the kernels dispatch to, and how many threads split a reduction, are fixed
when torch loads, from the environment; so the pin is set in the environment of a child process
before it imports torch. Builds whose recipe names no float path run in this process.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from vlm_resampler.errors import UserFacingError

# The float path the pretrained backbones' recipes name. AVX2 rather than the baseline ISA: every
# x86-64 server and laptop CPU since 2015 has it, and the baseline path built the tower 2x slower.
DEFAULT_FLOAT_PATH = {"isa": "avx2", "threads": 2}

# How each library is told its instruction set (read once, when it loads).
_ISA_ENV = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorised kernels
        "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: its AVX2 code path on any CPU
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
}
_X86 = {"x86_64", "amd64"}


class BackboneBuildError(UserFacingError, RuntimeError):
    """A pinned build's child process failed."""


def pinned_environment(float_path: dict, machine: str | None = None) -> dict[str, str]:
    """The environment variables that put a child on `float_path`: the thread count everywhere,
    the instruction set on x86-64 only (elsewhere torch, MKL and oneDNN have no such switch)."""
    if float_path.get("isa") not in _ISA_ENV or not isinstance(float_path.get("threads"), int):
        raise ValueError(
            f"recipe float_path={float_path!r}: expected {{'isa': one of {sorted(_ISA_ENV)}, 'threads': an int}}"
        )
    threads = str(float_path["threads"])
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if (machine or platform.machine()).lower() in _X86:
        env.update(_ISA_ENV[float_path["isa"]])
    return env


def build(train: Callable[[Path, dict], None], out_dir: Path, recipe: dict) -> None:
    """`train(out_dir, recipe)`, in a child process on the recipe's `float_path` when it names one.
    `train` must be a module-level function of this package (the child imports it by name)."""
    if "float_path" not in recipe:
        train(Path(out_dir), recipe)
        return
    target = f"{train.__module__}:{train.__qualname__}"
    env = {**os.environ, **pinned_environment(recipe["float_path"])}
    command = [sys.executable, "-m", __name__, target, str(out_dir), json.dumps(recipe)]
    completed = subprocess.run(command, env=env, check=False)  # progress bars pass through
    if completed.returncode != 0:
        raise BackboneBuildError(
            f"Building {target} into {out_dir} on float path {recipe['float_path']} failed: its process exited "
            f"with status {completed.returncode} (its error is printed above)."
        )


def _resolve(target: str) -> Callable[[Path, dict], None]:
    module_name, _, qualname = target.partition(":")
    if not module_name.startswith("vlm_resampler.") or not qualname.isidentifier():
        raise ValueError(f"target {target!r}: expected a module-level function of vlm_resampler ('module:function')")
    return getattr(importlib.import_module(module_name), qualname)


def _check_pinned(float_path: dict) -> None:
    """Say so when the pin could not take (a CPU without the ISA): the build then matches only
    builds made on CPUs like this one, as its record's cpu_capability shows."""
    import torch

    if torch.get_num_threads() != float_path["threads"]:
        raise RuntimeError(f"float path {float_path}: torch runs {torch.get_num_threads()} threads")
    wanted = _ISA_ENV[float_path["isa"]].get("ATEN_CPU_CAPABILITY", "").upper()
    got = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() in _X86 and got != wanted:
        print(
            f"float path {float_path}: this CPU's kernels run {got}, not {wanted}; this build will match "
            "only builds made on such CPUs",
            file=sys.stderr,
            flush=True,
        )


def main(argv: list[str]) -> None:
    target, out_dir, recipe_json = argv
    recipe = json.loads(recipe_json)
    _check_pinned(recipe["float_path"])
    _resolve(target)(Path(out_dir), recipe)


if __name__ == "__main__":
    main(sys.argv[1:])
