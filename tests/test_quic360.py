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


def write_csv(root, rows, encoding="utf-8"):
    (root / "test.csv").write_bytes(("\n".join(["url,query,annotation", *rows]) + "\n").encode(encoding))


def test_an_empty_caption_is_a_bad_row_named_or_counted(quic360):
    write_csv(quic360, ["a.jpg,Describe the panorama.,a room.", "b.jpg,Describe the panorama.,  "])
    with pytest.raises(ValueError, match=r"test.csv row 2 \(line 3\): empty caption"):
        load_split(config(quic360), "test")
    items, skipped = load_split(config(quic360, skip_bad_rows=True), "test")
    assert [i["image"].name for i in items] == ["a.jpg"] and len(skipped) == 1 and "empty caption" in skipped[0]


def test_non_utf8_text_names_the_file_and_line(quic360):
    write_csv(
        quic360, ["a.jpg,Describe the panorama.,a room.", "b.jpg,Describe the panorama.,un café"], encoding="latin-1"
    )
    with pytest.raises(ValueError, match=r"test.csv line 3: not UTF-8 text .*save the CSV as UTF-8"):
        load_split(config(quic360, skip_bad_rows=True), "test")


def test_a_truncated_image_is_named_or_counted(quic360):
    full = quic360 / "images" / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), np.uint8)).save(full)
    (quic360 / "images" / "cut.png").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    write_csv(quic360, ["a.jpg,Describe the panorama.,a room.", "cut.png,Describe the panorama.,a hall."])
    with pytest.raises(ValueError, match=r"row 2 \(line 3\): image .*cut.png is unreadable"):
        load_split(config(quic360), "test")
    items, skipped = load_split(config(quic360, skip_bad_rows=True), "test")
    assert len(items) == 1 and len(skipped) == 1 and "cut.png" in skipped[0]


def huge_png(path, width=60000, height=60000):
    """A valid PNG header claiming width x height pixels (3.6 G), with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )
    return path


def test_a_decompression_bomb_is_refused_from_its_header_naming_the_file(quic360):
    huge_png(quic360 / "images" / "bomb.png")
    write_csv(quic360, ["a.jpg,Describe the panorama.,a room.", "bomb.png,Describe the panorama.,a field."])
    with pytest.raises(
        ValueError, match=r"row 2 \(line 3\): image .*bomb.png is over the pixel limit, refused before decoding"
    ):
        load_split(config(quic360), "test")
    items, skipped = load_split(config(quic360, skip_bad_rows=True), "test")
    assert len(items) == 1 and "bomb.png" in skipped[0]


def test_load_panorama_names_the_file_for_a_gone_unreadable_or_huge_image(quic360, monkeypatch):
    import tracemalloc

    from vlm_resampler.data.datasets import BadImageError, load_panorama

    images = quic360 / "images"
    with pytest.raises(BadImageError, match=r"gone.jpg: image not found \(deleted or moved"):
        load_panorama(images / "gone.jpg", 64, 32)
    with pytest.raises(BadImageError, match=r"broken.jpg: image unreadable"):
        load_panorama(images / "broken.jpg", 64, 32)
    bomb = huge_png(images / "bomb.png")
    tracemalloc.start()
    with pytest.raises(BadImageError, match=r"bomb.png: over the pixel limit, refused before decoding"):
        load_panorama(bomb, 64, 32)
    assert tracemalloc.get_traced_memory()[1] < 50_000_000, "refused before the pixels were allocated"
    tracemalloc.stop()
    # Between the limit and twice it PIL only warns (and would allocate): refused all the same.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 32 - 1)
    with pytest.raises(
        ValueError, match=r"row 1 \(line 2\): image .*a.jpg is 64x32 pixels, over the pixel limit of 2047"
    ):
        load_split(config(quic360), "test")
    with pytest.raises(BadImageError, match=r"a.jpg: 64x32 pixels, over the pixel limit of 2047"):
        load_panorama(images / "a.jpg", 64, 32)
