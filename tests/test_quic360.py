"""Real-data layout: QuIC-360 CSVs. Bad rows are named, or skipped and counted."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from vlm_resampler.data.datasets import load_split


@pytest.fixture()
def quic360(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(images / name)
    (images / "broken.jpg").write_bytes(b"not an image")
    rows = [
        "url,query,annotation",
        "a.jpg,Describe the panorama.,a room.",
        "a.jpg,Describe the panorama.,an empty room.",
        "b.jpg,What is on the left?,a door.",
        "missing.jpg,Describe the panorama.,a street.",
        "broken.jpg,Describe the panorama.,a park.",
    ]
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def config(root, **extra):
    base = OmegaConf.load("conf/data/quic360.yaml")
    return OmegaConf.merge(base, {"root": str(root), "image_dir": "images", **extra})


def test_a_missing_image_names_file_and_row(quic360):
    with pytest.raises(FileNotFoundError, match=r"test.csv row 4 \(line 5\): image not found"):
        load_split(config(quic360), "test")


def test_skip_bad_rows_leaves_out_missing_and_unreadable_images_and_counts_them(quic360):
    items, skipped = load_split(config(quic360, skip_bad_rows=True), "test")
    assert [(i["image"].name, i["query"], i["references"]) for i in items] == [
        ("a.jpg", "Describe the panorama.", ["a room.", "an empty room."]),
        ("b.jpg", "What is on the left?", ["a door."]),
    ]
    assert len(skipped) == 2 and "row 4" in skipped[0] and "unreadable" in skipped[1]


def test_missing_columns_and_missing_split_file_are_named(quic360, tmp_path):
    (quic360 / "test.csv").write_text("url,caption\na.jpg,x\n")
    with pytest.raises(ValueError, match="missing column\\(s\\) query, annotation"):
        load_split(config(quic360), "test")
    with pytest.raises(FileNotFoundError, match="data.splits.train"):
        load_split(config(quic360), "train")
