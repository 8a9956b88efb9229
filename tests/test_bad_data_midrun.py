"""An image that disappears after the data was checked stops training with an error naming the
file, and leaves the run resumable (status interrupted, traceback.txt), not lost: at the level of
run_training, and in a real training whose images go away and come back."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from test_resume import logged_losses, start_cli, wait_for

from vlm_resampler.config.external import check_run_dir_free
from vlm_resampler.config.preflight import compose
from vlm_resampler.data.datasets import BadImageError, load_panorama
from vlm_resampler.runs import layout
from vlm_resampler.training import resume
from vlm_resampler.training import run as run_module

from conftest import run_cli


def test_an_image_deleted_mid_run_names_the_file_and_leaves_the_run_resumable(tmp_path, monkeypatch):
    gone = tmp_path / "pano_0007.png"

    def stage_that_loads_a_deleted_image(*args, **kwargs):
        load_panorama(gone, 64, 32)  # what a DataLoader worker does mid-epoch

    monkeypatch.setattr(run_module, "run_stage", stage_that_loads_a_deleted_image)
    run_dir = tmp_path / "run"
    overrides = ["debug=smoke", "stages=[resampler,finetune]", f"hydra.run.dir={run_dir}"]
    with pytest.raises(BadImageError, match="pano_0007.png: image not found"):
        run_module.run_training(compose("train", overrides), run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted", status
    # The default experiment.name is a timestamp: the message names it, so "the same command" is exact.
    match = re.search(r"run the same command again with experiment\.name=(\S+) ", status["reason"])
    assert "pano_0007.png" in status["reason"] and match, status["reason"]
    assert "pano_0007.png" in (run_dir / status["traceback"]).read_text()
    check_run_dir_free(
        compose("train", [*overrides, f"experiment.name={match.group(1)}"], with_hydra=True)
    )  # it resumes


# The real thing: images read by the Trainer's DataLoader at every step (the feature cache off),
# their folder moved away after the first resumable checkpoint, then moved back.
MIDRUN_ARGS = [
    "debug=smoke",
    "stages=[resampler]",
    "stage.resampler.max_steps=6",
    "stage.resampler.save_steps=2",
    "stage.resampler.cache_vision_features=false",
    "experiment.name=run",
]


@pytest.mark.slow
def test_images_gone_during_a_real_training_stop_it_naming_a_file_and_it_resumes_once_they_are_back(tmp_path):
    data = tmp_path / "data"
    reference = run_cli(
        "train.py", *MIDRUN_ARGS, f"data.root={data}", f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    run_dir = tmp_path / "run"
    args = [*MIDRUN_ARGS, f"data.root={data}", f"hydra.run.dir={run_dir}"]
    proc = start_cli(*args, cwd=tmp_path)
    first = run_dir / "resampler" / layout.RESUME_DIR / "checkpoint-2" / layout.RESUME_COMPLETE
    wait_for(first.is_file, proc, "the first resumable checkpoint")
    (data / "images").rename(tmp_path / "images_elsewhere")  # every later read fails, whichever image
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    match = re.search(r"error: training stopped: (\S+\.png): image not found", err)
    assert match and match.group(1).startswith(str(data / "images")), err[-3000:]
    status = json.loads((run_dir / layout.STATUS).read_text())
    assert status["status"] == layout.INTERRUPTED and match.group(1) in status["reason"], status
    saved = resume.latest_checkpoint(run_dir / "resampler")
    assert saved is not None

    (tmp_path / "images_elsewhere").rename(data / "images")
    done = run_cli("train.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"stage resampler: resuming from step {resume.checkpoint_step(saved)} " in done.stdout, done.stdout[-2000:]
    found = load_file(str(run_dir / "resampler" / layout.WEIGHTS))
    expected = load_file(str(tmp_path / "reference" / "resampler" / layout.WEIGHTS))
    assert found.keys() == expected.keys() and all(torch.equal(found[k], expected[k]) for k in expected)
    assert logged_losses(run_dir / "resampler") == logged_losses(tmp_path / "reference" / "resampler")
