"""Bad input: a short error that names the key and the closest valid names, in seconds,
before any model is built or any run directory is created."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bad_config_corpus import corpus_folders, entry_argv, entry_id, load_corpus, refusal
from conftest import run_cli

CORPUS = load_corpus()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return corpus_folders(tmp_path_factory.mktemp("corpus"))


def test_the_corpus_covers_every_kind_of_bad_input():
    assert len(CORPUS) >= 50
    assert sum("eval" in e for e in CORPUS) >= 10


@pytest.mark.parametrize("entry", CORPUS, ids=[entry_id(e) for e in CORPUS])
def test_bad_config_corpus_is_refused_with_a_short_message_naming_the_key(entry, folders, capsys):
    """In-process, through the same check_train_argv / check_eval_argv the scripts call."""
    script, argv = entry_argv(entry, folders)
    started = time.perf_counter()
    code, message = refusal(script, argv, capsys)
    assert code == 2, f"accepted: {argv}\n{message}"
    for text in entry["expect"]:
        assert text in message, f"{text!r} not in:\n{message}"
    assert "Traceback" not in message
    assert len(message.strip().splitlines()) <= 4, message
    assert time.perf_counter() - started < 15
    assert not (Path(folders["tmp"]) / "run").exists(), "nothing may start before the config is valid"


# A few of the corpus through the real command line: exit 2 in seconds, nothing created.
CLI_CASES = [
    ("train.py", ["resampler=bimambo"], ["Did you mean 'bimamba'"]),
    ("train.py", ["resampler=mlp", "resampler.d_state=4"], ["is a parameter of resampler=bimamba"]),
    ("train.py", ["stage.finetune.lrr=1"], ["stage.finetune.lrr", "Did you mean 'lr'"]),
    ("train.py", ["stage.resampler.batch_size=0"], ["stage.resampler.batch_size=0", "an int > 0"]),
    ("train.py", ["init_from={bimamba_stage}", "stages=[finetune]"], ["holds a resampler=bimamba checkpoint"]),
    ("eval.py", ["checkpoint_dir={broken_stage}"], ["is not valid JSON"]),
]


@pytest.mark.parametrize("script, args, expected", CLI_CASES, ids=[" ".join(a) for _, a, _ in CLI_CASES])
def test_bad_config_fails_fast_through_the_cli(script, args, expected, folders, tmp_path):
    args = [a.format(**folders) for a in args]
    if script == "train.py":
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    started = time.perf_counter()
    done = run_cli(script, *args, cwd=tmp_path)
    elapsed = time.perf_counter() - started
    assert done.returncode == 2, done.stderr
    for text in expected:
        assert text in done.stderr, f"{text!r} not in:\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) <= 6
    assert list(tmp_path.iterdir()) == [], "nothing may be created before the config is valid"
    assert elapsed < 30  # typically 5-8 s: Python, Hydra and torch imports


def test_sweep_lists_every_bad_job_and_starts_none(tmp_path):
    done = run_cli(
        "train.py",
        "-m",
        "resampler=mlp,bimamba",
        "resampler.expand=1.5,2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "2 of 4 job(s)" in done.stderr
    assert "[resampler=mlp resampler.expand=1.5]" in done.stderr
    assert "[resampler=mlp resampler.expand=2]" in done.stderr
    assert not (tmp_path / "sweep").exists()


def test_eval_requires_an_existing_checkpoint_dir(tmp_path):
    done = run_cli("eval.py", f"checkpoint_dir={tmp_path / 'nope'}", cwd=tmp_path)
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_a_hub_backbone_without_a_hub_fails_in_seconds_pointing_to_the_offline_default(tmp_path):
    started = time.perf_counter()
    done = run_cli("train.py", "backbone=siglip_base_qwen3_0_6b", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "google/siglip-base-patch16-224" in done.stderr and "backbone=tiny" in done.stderr
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "bad", ["stage.resampler.batch_size=0", "stages=[finetune,vision]", "precision=fp8", "attn_implementation=flash"]
)
def test_a_bad_stage_or_compute_setting_is_refused_before_transformers_is_imported(bad):
    """validate.CHECK_SETS runs the checks that need no transformers first: such a mistake is
    refused in about 2 s instead of 5 (the transformers import)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from vlm_resampler.cli import check_train_argv\n"
        "try:\n"
        f"    check_train_argv([{bad!r}])\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'transformers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert bad.split("=")[0].split(".")[-1] in done.stderr


def test_training_into_an_existing_run_is_refused(tmp_path):
    run_dir = tmp_path / "runs" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text('{"status": "done"}')
    done = run_cli("train.py", "experiment.name=taken", cwd=tmp_path)
    assert done.returncode == 2
    assert "already holds a run" in done.stderr and "experiment.name" in done.stderr
