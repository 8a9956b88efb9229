"""Run launch/ scripts as child processes of a warm interpreter (conftest.run_cli).

A train.py run in a fresh interpreter spent about 5 of its ~9 s of CPU importing torch,
transformers and peft, and the fast tier starts about seventy such runs. A zygote is started once
per test worker with those modules imported (and no Python thread; torch's idle native threads
are not copied by fork); each command is a fork of it
that sets its own argv, working directory, environment and output files, runs the script as
`__main__`, and exits with the script's exit status: a child process with its own signals, exit
code and file descriptors, as a user's command would be, minus the import time.

What a fork cannot give is a fresh import state, so a command whose environment differs from the
zygote's in a variable read at import time (HF_*, TORCH*, OMP_*, ...) runs in a fresh interpreter
instead, and so do the tests that are about import state (they call subprocess themselves).

The protocol is one JSON line each way over the zygote's stdin/stdout pipes: a request
{argv, cwd, env, stdout, stderr}, then {"pid"} when the child starts and {"returncode"} when it ends.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

# Read when these packages are imported (or when torch starts its thread pool), so a fork of a
# zygote that imported them with other values would not behave like a fresh command.
IMPORT_TIME_ENV_PREFIXES = (
    "HF_",
    "HUGGINGFACE",
    "TRANSFORMERS",
    "TORCH",
    "PYTORCH",
    "OMP_",
    "MKL_",
    "PYTHON",
    "CUDA",
    "LD_",
)
WARM_MODULES = (
    "torch",
    "transformers",
    "peft",
    "hydra",
    "vlm_resampler.training.run",
    "vlm_resampler.evaluation.evaluate",
    "vlm_resampler.inspection.cli",
    "matplotlib.pyplot",  # each stage plots its loss curve (0.36 s to import)
)


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.upper().startswith(IMPORT_TIME_ENV_PREFIXES)}


def _child(request: dict, replies_fd: int) -> None:
    """In the forked child: become the command, then exit as it would (never returns)."""
    import runpy
    import traceback

    code = 1
    try:
        os.close(replies_fd)
        os.setpgrp()  # its own process group, as subprocess gives a command
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        sys.path[0] = str(Path(request["argv"][0]).parent)  # as `python launch/x.py` sets it
        try:
            runpy.run_path(request["argv"][0], run_name="__main__")
            code = 0
        except SystemExit as exit_:
            if exit_.code is None:
                code = 0
            elif isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()  # what interpreter shutdown runs (logging, the eval's JVM, ...)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream at exit: the status still counts
                pass
        os._exit(code)


def warm_tokenizer() -> None:
    """Load the smoke backbone's tokenizer into models/backbones' per-process cache (about 1.5 s
    of parsing per command otherwise). The cache key holds the path and the files' sizes and
    mtimes, so a command with another cache directory, or after a rebuild, still loads its own."""
    from omegaconf import OmegaConf

    from vlm_resampler.catalog import CONF_DIR
    from vlm_resampler.models.backbones import load_tokenizer

    smoke_backbone = OmegaConf.load(CONF_DIR / "backbone" / "tiny.yaml")  # what debug=smoke chooses
    load_tokenizer(smoke_backbone.language_model.name_or_path, smoke_backbone.tokenizer.revision)


def serve() -> None:
    """The zygote's loop: one request per line on stdin, answers on stdout."""
    import importlib

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the zygote itself prints (an import, say) must not mix with the replies
    for name in WARM_MODULES:
        importlib.import_module(name)
    warm_tokenizer()
    # What the zygote holds now lives as long as every child: out of the collector's sight, a
    # child's gc.collect() (the Trainer calls it at every stage: 0.28 s each here, 7 Dec) scans
    # only what the command itself made, and the pages are not touched (copied) by the scan.
    gc.freeze()
    print(json.dumps({"ready": True}), file=replies)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, replies.fileno())
        print(json.dumps({"pid": pid}), file=replies)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=replies)


class Zygote:
    """The test worker's side: starts the zygote, sends it commands one at a time."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=Path(__file__).parent,
        )
        self.lock = threading.Lock()
        ready = self.process.stdout.readline()
        if json.loads(ready or "{}").get("ready") is not True:
            raise RuntimeError(f"the CLI zygote did not start (exit {self.process.poll()})")

    def can_run(self, env: dict[str, str]) -> bool:
        return self.process.poll() is None and import_time_env(env) == import_time_env(self.env)

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float, out_dir: Path):
        stdout, stderr = out_dir / "stdout", out_dir / "stderr"
        with self.lock:
            request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(stdout), "stderr": str(stderr)}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = self._reply()["pid"]
            killed: list[int] = []
            timer = threading.Timer(timeout, lambda: killed.append(_kill_group(pid)))
            timer.start()
            try:
                returncode = self._reply()["returncode"]
            finally:
                timer.cancel()
        if killed:
            raise subprocess.TimeoutExpired(argv, timeout, stdout.read_text(), stderr.read_text())
        return subprocess.CompletedProcess(argv, returncode, stdout.read_text(), stderr.read_text())

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the CLI zygote exited (status {self.process.wait()}) before answering")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _kill_group(pid: int) -> int:
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return pid


if __name__ == "__main__":
    serve()
