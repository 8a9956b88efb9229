"""An image that disappears after the data was checked stops training with an error naming the
file, and leaves the run resumable (status interrupted, traceback.txt), not lost."""
from __future__ import annotations

import json
import re

import pytest

from vlm_resampler.config.preflight import compose
from vlm_resampler.config.validate import check_run_dir_free
from vlm_resampler.data.datasets import BadImageError, load_panorama
from vlm_resampler.training import run as run_module


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
    check_run_dir_free(compose("train", [*overrides, f"experiment.name={match.group(1)}"], with_hydra=True))  # it resumes
