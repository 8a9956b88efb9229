"""Bad input: a short error that names the key and the closest valid names, in seconds,
before any model is built or any run directory is created."""
from __future__ import annotations

import time

import pytest

from conftest import run_cli


@pytest.mark.parametrize(
    "args, expected",
    [
        (["resampler=mlpp"], ["resampler=mlpp", "Did you mean 'mlp'", "bimamba, mlp, perceiver, qformer"]),
        (["resampler.hiden_dim=512"], ["resampler.hiden_dim", "Did you mean 'hidden_dim'"]),
        (["resampler.expand=2"], ["resampler.expand", "is a parameter of resampler=bimamba"]),
        (["resampeler=mlp"], ["resampeler", "Did you mean 'resampler'"]),
        (["stage.finetune.lrr=1e-4"], ["stage.finetune.lrr", "'lr'"]),
        (["stages=[resampler,vision]"], ["out of order"]),
        (["stages=[vison]"], ["unknown stage 'vison'", "Did you mean 'vision'"]),
        (["resampler.depth=0"], ["resampler.depth=0", "int >= 1"]),
        (["resampler.hidden_dim=wide"], ["hidden_dim='wide'", "expected int"]),
        (["resampler=bimamba", "resampler.expand=-1"], ["resampler.expand=-1", "> 0"]),
        (["resampler=qformer", "resampler.num_attention_heads=5"], ["num_attention_heads=5", "divisor of hidden_dim"]),
        (["+resampler.foo=1"], ["resampler.foo is not a parameter"]),
        (["backbone=tinyy"], ["backbone=tinyy", "Did you mean 'tiny'"]),
        (["init_from=runs/does-not-exist/resampler"], ["init_from", "not a stage directory"]),
        (["stage.finetune.lr=abc"], ["stage.finetune.lr='abc'", "a number > 0"]),
        (["stage.resampler.max_steps=0"], ["stage.resampler.max_steps=0", "-1 to run `epochs`"]),
        (["stage.vision.lr_scheduler=cosin"], ["lr_scheduler='cosin'", "Did you mean 'cosine'"]),
        (["stage.finetune.train=[resampler,projecter]"], ["'projecter'", "Did you mean 'projector'"]),
        (["stitch=dedupe"], ["stitch=dedupe", "dedupe_overlap"]),
        (["view=resize"], ["view ResizeView has no overlapping views", "stages=[resampler,finetune]"]),
        (["view.overlap=1.5"], ["view.overlap=1.5"]),
    ],
)
def test_bad_train_config_fails_fast_with_a_named_key(args, expected, tmp_path):
    started = time.perf_counter()
    done = run_cli("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    elapsed = time.perf_counter() - started
    assert done.returncode == 2, done.stderr
    for text in expected:
        assert text in done.stderr, f"{text!r} not in:\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) <= 6
    assert not (tmp_path / "run").exists(), "nothing may start before the config is valid"
    assert elapsed < 30


def test_sweep_lists_every_bad_job_and_starts_none(tmp_path):
    done = run_cli(
        "train.py", "-m", "resampler=mlp,bimamba", "resampler.expand=1.5,2", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path
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


def test_training_into_an_existing_run_is_refused(tmp_path):
    run_dir = tmp_path / "runs" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text('{"status": "done"}')
    done = run_cli("train.py", "experiment.name=taken", cwd=tmp_path)
    assert done.returncode == 2
    assert "already holds a run" in done.stderr and "experiment.name" in done.stderr
