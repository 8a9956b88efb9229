"""run_cli forks launch/ commands from a warm interpreter (tests/cli_zygote.py): what a test sees
of such a command must be what it would see of `python script.py ...` in a fresh process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import worker_zygote

SCRIPT = """
import os, sys
print("out", sys.argv[1:], os.getcwd() == os.environ["EXPECTED_CWD"], __name__)
print("err", os.environ.get("ONLY_IN_THIS_COMMAND"), file=sys.stderr)
mode = sys.argv[1]
if mode == "exit":
    sys.exit(int(sys.argv[2]))
if mode == "message":
    sys.exit("a message instead of a code")
if mode == "raise":
    raise ValueError("uncaught")
if mode == "signal":
    os.kill(os.getpid(), signal := __import__("signal").SIGTERM)
if mode == "atexit":
    import atexit
    atexit.register(lambda: print("atexit ran"))
if mode == "path":
    print(sys.path[0] == os.path.dirname(os.path.abspath(sys.argv[0])))
"""


@pytest.fixture
def zygote():
    return worker_zygote()  # run_cli's: the zygote the suite's commands are forked from


@pytest.mark.parametrize(
    "args", [["exit", "0"], ["exit", "3"], ["message"], ["raise"], ["signal"], ["atexit"], ["path"]]
)
def test_a_forked_command_looks_like_a_fresh_process(zygote, args, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = os.environ | {"EXPECTED_CWD": str(tmp_path), "ONLY_IN_THIS_COMMAND": "yes"}
    fresh = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    forked = zygote.run([str(script), *args], cwd=tmp_path, env=env, timeout=60, out_dir=tmp_path)
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
    # a traceback names the file the same way; only its first frame (how the script was started) differs
    last_lines = slice(-2, None) if args == ["raise"] else slice(None)
    assert forked.stderr.splitlines()[last_lines] == fresh.stderr.splitlines()[last_lines]
    if args == ["signal"]:
        assert forked.returncode == -signal.SIGTERM
    assert "True" in forked.stdout and "__main__" in forked.stdout


def test_a_command_that_outlives_its_timeout_is_killed(zygote, tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired) as timeout:
        zygote.run([str(script)], cwd=tmp_path, env=dict(os.environ), timeout=1, out_dir=tmp_path)
    assert "started" in timeout.value.output
    quick = tmp_path / "quick.py"
    quick.write_text("print('next')\n")
    after = zygote.run([str(quick)], cwd=tmp_path, env=dict(os.environ), timeout=30, out_dir=tmp_path)
    assert (after.returncode, after.stdout) == (0, "next\n"), "the zygote serves the next command"


def test_an_environment_that_changes_imports_needs_a_fresh_interpreter(zygote):
    assert zygote.can_run(dict(os.environ) | {"VLM_RESAMPLER_TRACEBACK": "1"})
    assert not zygote.can_run(dict(os.environ) | {"HF_HUB_CACHE": "/elsewhere"})
    assert not zygote.can_run(dict(os.environ) | {"OMP_NUM_THREADS": "7"})
