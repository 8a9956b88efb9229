"""Tests for vlm_resampler.data.synthpano: determinism, layout, rendering geometry, CSV loading."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_resampler.data.synthpano.files import ensure_synthpano, generate_synthpano, load_objects, load_quic360_csv
from vlm_resampler.data.synthpano.objects import (
    COLOURS,
    DIRECTION_YAW_DEG,
    DIRECTIONS,
    PITCH_JITTER_DEG,
    POLE_DIRECTIONS,
    POLE_PITCH_DEG,
    SHAPES,
    SIZE_SCALE,
    SIZES,
    YAW_JITTER_DEG,
    SceneObject,
    object_extent_deg,
)
from vlm_resampler.data.synthpano.render import object_mask
from vlm_resampler.data.synthpano.scene import SPLITS, objects_keep_apart
from vlm_resampler.data.synthpano.text import question_answers
from vlm_resampler.panorama.views import HorizonViews

SMALL = {"num_train": 24, "num_val": 6, "num_test": 6}
DIRECTION_PHRASES = {
    "front": ("in front", "ahead"),
    "right": ("on the right", "to the right"),
    "behind": ("behind",),
    "left": ("on the left", "to the left"),
    "above": ("above", "overhead"),
    "below": ("below", "underfoot"),
}
AT_PHRASE = {
    "front": "in front",
    "right": "on the right",
    "behind": "behind",
    "left": "on the left",
    "above": "above",
    "below": "below",
}


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "synthpano"
    generate_synthpano(root, seed=0, **SMALL)
    return root


def read_image(root: Path, url: str) -> np.ndarray:
    with Image.open(root / url) as image:
        return np.asarray(image.convert("RGB"))


# --------------------------------------------------------------------------- files and determinism


def test_same_seed_is_byte_identical_and_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_synthpano(again, seed=0, **SMALL)
    assert file_hashes(again) == file_hashes(dataset)
    other = tmp_path / "other"
    generate_synthpano(other, seed=1, **SMALL)
    assert (other / "train.csv").read_bytes() != (dataset / "train.csv").read_bytes()
    assert (other / "images/train_00000.png").read_bytes() != (dataset / "images/train_00000.png").read_bytes()


def test_scenes_do_not_depend_on_split_sizes(dataset: Path, tmp_path: Path) -> None:
    generate_synthpano(tmp_path / "tiny", seed=0, num_train=2, num_val=0, num_test=1)
    for url in ("images/train_00001.png", "images/test_00000.png"):
        assert (tmp_path / "tiny" / url).read_bytes() == (dataset / url).read_bytes()


def test_layout_and_csv_columns(dataset: Path) -> None:
    for split in SPLITS:
        with open(dataset / f"{split}.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["url", "query", "annotation"]
        urls = {row[0] for row in rows[1:]}
        assert urls == {f"images/{split}_{i:05d}.png" for i in range(SMALL[f"num_{split}"])}
        assert {row[1] for row in rows[1:]} == {"Describe the panorama."}
    with Image.open(dataset / "images/train_00000.png") as image:
        assert image.size == (512, 256) and image.mode == "RGB"
    leftovers = [p.name for p in dataset.parent.iterdir() if p.name != dataset.name]
    assert leftovers == []  # staging directory renamed away, nothing else left behind


def test_manifest_records_params_counts_and_csv_hashes(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["params"] == {**SMALL, "seed": 0, "size": [512, 256], "query": "Describe the panorama."}
    assert manifest["counts"]["train"] == {"images": 24, "rows": 96}
    for split in SPLITS:
        assert manifest["csv_sha256"][split] == hashlib.sha256((dataset / f"{split}.csv").read_bytes()).hexdigest()


def test_splits_share_no_scene(dataset: Path) -> None:
    image_hashes = {
        split: {hashlib.sha256(p.read_bytes()).hexdigest() for p in (dataset / "images").glob(f"{split}_*.png")}
        for split in SPLITS
    }
    assert len(image_hashes["train"]) == SMALL["num_train"]
    assert not image_hashes["train"] & image_hashes["val"]
    assert not image_hashes["train"] & image_hashes["test"]
    assert not image_hashes["val"] & image_hashes["test"]


def test_ensure_reuses_matching_dataset_and_regenerates_otherwise(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    params = {"seed": 3, "num_train": 3, "num_val": 1, "num_test": 1, "size": (128, 64)}
    ensure_synthpano(root, **params)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    ensure_synthpano(root, **params)
    assert (root / "manifest.json").stat().st_mtime_ns == stamp

    ensure_synthpano(root, **{**params, "num_val": 2})
    assert json.loads((root / "manifest.json").read_text())["counts"]["val"]["images"] == 2

    (root / "train.csv").write_text("url,query,annotation\n")  # tampered: hash no longer matches
    ensure_synthpano(root, **{**params, "num_val": 2})
    assert len(load_quic360_csv(root / "train.csv")) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"size": (512, 512)}, "size"), ({"num_train": -1}, "num_train"), ({"query": " "}, "query")],
)
def test_generate_validates_params(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_synthpano(tmp_path / "bad", **kwargs)


# --------------------------------------------------------------------------- content


def test_captions_state_every_object(dataset: Path) -> None:
    objects = load_objects(dataset / "train_objects.jsonl")
    records = load_quic360_csv(dataset / "train.csv")
    assert len(records) == SMALL["num_train"]
    for record in records:
        url = record["image"].relative_to(dataset).as_posix()
        assert len(record["references"]) >= 3
        assert len(set(record["references"])) == len(record["references"])
        for reference in record["references"]:
            assert len(reference.split()) <= 26  # "on the right there is a large yellow triangle; ..." x 3
            assert reference == reference.lower()
            for obj in objects[url]:
                assert f"a {obj.size} {obj.colour} {obj.shape}" in reference
                assert any(phrase in reference for phrase in DIRECTION_PHRASES[obj.direction])


def test_object_annotations_are_in_range(dataset: Path) -> None:
    poles = 0
    for split in SPLITS:
        for objects in load_objects(dataset / f"{split}_objects.jsonl").values():
            assert 1 <= len(objects) <= 3
            assert len({o.direction for o in objects}) == len(objects)
            assert [o.direction for o in objects] == sorted((o.direction for o in objects), key=DIRECTIONS.index)
            for obj in objects:
                assert obj.colour in COLOURS and obj.shape in SHAPES and obj.size in SIZES
                assert -180.0 < obj.yaw <= 180.0
                if obj.direction in POLE_DIRECTIONS:
                    poles += 1
                    sign = 1.0 if obj.direction == "above" else -1.0
                    assert POLE_PITCH_DEG[0] <= sign * obj.pitch <= POLE_PITCH_DEG[1]
                    continue
                yaw_offset = (obj.yaw - DIRECTION_YAW_DEG[obj.direction] + 180.0) % 360.0 - 180.0
                assert abs(yaw_offset) <= YAW_JITTER_DEG and abs(obj.pitch) <= PITCH_JITTER_DEG
    assert poles  # the small fixture has objects above or below too


def test_objects_record_their_size_in_the_jsonl(dataset: Path) -> None:
    first = json.loads((dataset / "train_objects.jsonl").read_text().splitlines()[0])
    assert all(obj["size"] in SIZES for obj in first["objects"])
    # Files of generator version 2 have no size: their objects read back as small (their only size).
    legacy = {k: v for k, v in first["objects"][0].items() if k != "size"}
    assert SceneObject(**legacy).size == "small"


def sampled_scenes(count: int, seed: int = 0) -> list:
    from vlm_resampler.data.synthpano.scene import sample_scene, scene_rng

    return [sample_scene(scene_rng(seed, split, i)) for split in SPLITS for i in range(count)]


def test_sizes_and_poles_are_drawn_as_documented() -> None:
    scenes = sampled_scenes(200)  # 600 scenes
    with_pole = [s for s in scenes if any(o.direction in POLE_DIRECTIONS for o in s.objects)]
    assert 0.18 <= len(with_pole) / len(scenes) <= 0.32
    assert any({"above", "below"} <= {o.direction for o in s.objects} for s in with_pole)
    sizes = [o.size for s in scenes for o in s.objects]
    assert 0.4 <= sizes.count("large") / len(sizes) <= 0.6
    for scene in scenes:
        directions = [o.direction for o in scene.objects]
        assert 1 <= len(directions) <= 3 and len(set(directions)) == len(directions)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow an ERP mask by ``pixels`` in every direction (8-neighbourhood), wrapping at the seam."""
    for _ in range(pixels):
        grown = mask | np.roll(mask, 1, axis=1) | np.roll(mask, -1, axis=1)
        grown[1:] |= grown[:-1].copy()
        grown[:-1] |= grown[1:].copy()
        mask = grown
    return mask


def test_objects_never_touch() -> None:
    for scene in sampled_scenes(100):
        assert objects_keep_apart(scene.objects)
        masks = [dilate(object_mask(o, (256, 512)), 1) for o in scene.objects]
        for i, a in enumerate(masks):
            for b in masks[i + 1 :]:
                assert not (a & b).any(), scene.objects


@pytest.mark.parametrize("num_poles", [1, 2])
def test_fallback_layout_keeps_even_the_largest_objects_apart(num_poles: int) -> None:
    from itertools import combinations

    from vlm_resampler.data.synthpano.scene import _fallback_positions

    for poles in combinations(POLE_DIRECTIONS, num_poles):
        for horizon in combinations(DIRECTION_YAW_DEG, 3 - num_poles):
            directions = list(horizon) + list(poles)
            positions = _fallback_positions(directions)
            objects = [
                SceneObject("triangle", "red", d, yaw, pitch, "large") for d, (yaw, pitch) in zip(directions, positions)
            ]
            assert objects_keep_apart(objects), objects
    horizon = [SceneObject("triangle", "red", d, yaw, 0.0, "large") for d, yaw in DIRECTION_YAW_DEG.items()]
    assert objects_keep_apart(horizon)  # four large triangles on the horizon, nominal yaws


def test_objects_are_drawn_where_annotated(dataset: Path) -> None:
    for url, objects in load_objects(dataset / "train_objects.jsonl").items():
        image = read_image(dataset, url)
        for obj in objects:
            col = int((obj.yaw / 360.0 + 0.5) * 512) % 512
            row = int((0.5 - obj.pitch / 180.0) * 256)
            assert tuple(image[row, col]) == COLOURS[obj.colour], (url, obj)


def test_an_object_behind_straddles_the_seam(dataset: Path) -> None:
    straddling = []
    for url, objects in load_objects(dataset / "train_objects.jsonl").items():
        for obj in objects:
            mask = object_mask(obj, (256, 512))
            if mask[:, 0].any() and mask[:, -1].any():
                assert obj.direction in ("behind", *POLE_DIRECTIONS)  # an object over a pole touches every column
                pixels = read_image(dataset, url)[mask]
                assert (pixels == np.array(COLOURS[obj.colour], dtype=np.uint8)).all()
                straddling.append(url)
    assert straddling


def test_object_at_180_is_split_evenly_across_the_seam() -> None:
    mask = object_mask(SceneObject("circle", "red", "behind", 180.0, 0.0), (256, 512))
    assert mask[:, 0].any() and mask[:, -1].any()
    assert mask[:, :256].sum() == mask[:, 256:].sum()
    assert not mask[:, 128:384].any()  # nothing near the front


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pitch", [0.0, 75.0, -70.0])
def test_object_at_the_seam_is_mirror_symmetric_across_it(shape: str, size: str, pitch: float) -> None:
    # Every shape is symmetric about its vertical axis; at yaw 180 that axis is the seam, and the
    # column mirror c -> W-1-c maps longitude -> -longitude.
    obj = SceneObject(shape, "red", "behind", 180.0, pitch, size)
    mask = object_mask(obj, (256, 512))
    assert mask[:, 0].any() and mask[:, -1].any()
    assert np.array_equal(mask, mask[:, ::-1])


def erp_pixel_directions(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit direction [H, W, 3] (x right, y up, z front) and solid angle [H, 1] of every ERP pixel."""
    lon = ((np.arange(width) + 0.5) / width * 2.0 - 1.0) * np.pi
    lat = (0.5 - (np.arange(height) + 0.5) / height) * np.pi
    lon, lat = np.meshgrid(lon, lat)
    dirs = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], axis=-1)
    edges = (0.5 - np.arange(height + 1) / height) * np.pi
    solid_angle = (np.sin(edges[:-1]) - np.sin(edges[1:]))[:, None] * (2.0 * np.pi / width)
    return dirs, solid_angle


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("yaw", "pitch"), [(30.0, 75.0), (-120.0, -75.0), (180.0, 78.0)])
def test_circle_near_a_pole_covers_exactly_its_spherical_cap(size: str, yaw: float, pitch: float) -> None:
    height, width = 512, 1024
    dirs, solid_angle = erp_pixel_directions(height, width)
    centre = np.array(
        [
            np.cos(np.radians(pitch)) * np.sin(np.radians(yaw)),
            np.sin(np.radians(pitch)),
            np.cos(np.radians(pitch)) * np.cos(np.radians(yaw)),
        ]
    )
    angle = np.degrees(np.arccos(np.clip(dirs @ centre, -1.0, 1.0)))
    radius = 20.0 * SIZE_SCALE[size]
    assert object_extent_deg("circle", size) == radius
    mask = object_mask(
        SceneObject("circle", "red", "above" if pitch > 0 else "below", yaw, pitch, size), (height, width)
    )
    # Inside the cap: every pixel; outside: none (a gnomonic circle of radius tan r is that cap).
    assert mask[angle < radius - 1e-6].all() and not mask[angle > radius + 1e-6].any()
    assert angle[mask].max() == pytest.approx(radius, abs=0.5)
    assert mask[0].all() if pitch + radius > 90.0 else True  # it covers the pole: every column of the top row
    cap = 2.0 * np.pi * (1.0 - np.cos(np.radians(radius)))
    assert (solid_angle * mask).sum() == pytest.approx(cap, rel=0.02)
    # In the ERP it is stretched sideways: many more columns than rows.
    rows, cols = np.nonzero(mask)
    assert np.unique(cols).size > 2 * np.unique(rows).size


@pytest.mark.parametrize("shape", SHAPES)
def test_smallest_placement_is_clearly_visible_in_a_112px_view(shape: str) -> None:
    # Worst case: full jitter, seen in the 120 deg / 112 px view of its direction.
    obj = SceneObject(shape, "red", "right", 90.0 + YAW_JITTER_DEG, PITCH_JITTER_DEG)
    mask = torch.from_numpy(object_mask(obj, (256, 512))).float()[None]
    right_view = HorizonViews(fov_deg=120.0, overlap=0.25, size=112).views(mask)[1, 0]
    assert (right_view > 0.5).sum() >= 250  # e.g. >= 16x16 px


# --------------------------------------------------------------------------- load_quic360_csv


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_load_groups_by_url_and_query_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    rows = [
        ["b.png", "q1", "b one"],
        ["a.png", "q1", "a one"],
        ["b.png", "q1", "b two"],
        ["b.png", "q2", "b other query"],
    ]
    records = load_quic360_csv(write_csv(tmp_path / "x.csv", ["url", "query", "annotation", "extra"], rows))
    assert records == [
        {"image": tmp_path / "b.png", "query": "q1", "references": ["b one", "b two"]},
        {"image": tmp_path / "a.png", "query": "q1", "references": ["a one"]},
        {"image": tmp_path / "b.png", "query": "q2", "references": ["b other query"]},
    ]


def test_load_reports_missing_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "cols.csv", ["url", "caption"], [["a.png", "x"]])
    with pytest.raises(ValueError, match=r"cols\.csv.*query, annotation"):
        load_quic360_csv(path)


def test_load_reports_missing_image_with_row_number(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    path = write_csv(
        tmp_path / "img.csv",
        ["url", "query", "annotation"],
        [["a.png", "q", "x"], ["a.png", "q", "y"], ["gone.png", "q", "z"]],
    )
    with pytest.raises(FileNotFoundError, match=r"img\.csv row 3 .*gone\.png"):
        load_quic360_csv(path)


# --------------------------------------------------------------------------- question/answer pairs, seam


def test_question_answers_match_the_objects(dataset: Path) -> None:
    objects = load_objects(dataset / "train_objects.jsonl")
    qa = load_quic360_csv(dataset / "train_qa.csv")
    answers = {(str(item["image"].relative_to(dataset)), item["query"]): item["references"] for item in qa}
    for url, objs in objects.items():
        by_direction = {o.direction: o for o in objs}
        for direction, phrase in AT_PHRASE.items():
            obj = by_direction.get(direction)
            expected = f"a {obj.size} {obj.colour} {obj.shape}." if obj else "nothing."
            assert answers[(url, f"What is {phrase}?")] == [expected]
        assert answers[(url, "How many objects are there?")] == [["one.", "two.", "three."][len(objs) - 1]]
        for obj in objs:
            phrase = AT_PHRASE[obj.direction]
            assert answers[(url, f"Which colour is the {obj.shape} {phrase}?")] == [f"{obj.colour}."]
            assert answers[(url, f"What size is the {obj.colour} {obj.shape} {phrase}?")] == [f"{obj.size}."]
        assert sum(key[0] == url for key in answers) == len(AT_PHRASE) + 1 + 2 * len(objs)


def test_eval_scores_every_question_kind_apart() -> None:
    from vlm_resampler.data.answers import question_kind
    from vlm_resampler.evaluation.synthpano_eval import answer_hits, exact_match

    objects = [
        SceneObject("circle", "red", "front", 0.0, 0.0, "large"),
        SceneObject("square", "blue", "above", 40.0, 70.0),
    ]
    pairs = question_answers(objects)
    kinds = [question_kind(question) for question, _ in pairs]
    assert kinds == ["direction"] * 4 + ["pole"] * 2 + ["count"] + ["colour"] * 2 + ["size"] * 2
    assert ("What is above?", "a small blue square.") in pairs
    assert ("What size is the red circle in front?", "large.") in pairs
    items = [{"query": question, "references": [answer]} for question, answer in pairs]
    scores = exact_match(items, answer_hits(items, [answer.upper() for _, answer in pairs]))
    assert scores["exact_match"] == 1.0
    assert {kind: v["n_items"] for kind, v in scores["by_kind"].items()} == {
        "colour": 2,
        "count": 1,
        "direction": 4,
        "pole": 2,
        "size": 2,
    }


def test_conversations_hold_the_caption_and_every_question(dataset: Path) -> None:
    lines = (dataset / "train_conversations.jsonl").read_text().splitlines()
    qa_rows = list(csv.DictReader(open(dataset / "train_qa.csv")))
    assert len(lines) == SMALL["num_train"]
    first = json.loads(lines[0])
    turns = first["conversations"]
    assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    assert len(turns) // 2 == 1 + sum(row["url"] == first["image"] for row in qa_rows)


def test_seam_flag_marks_exactly_the_images_whose_object_crosses_the_seam(dataset: Path) -> None:
    from vlm_resampler.data.synthpano.files import seam_urls

    seam = seam_urls(dataset / "train_objects.jsonl")
    for url, objs in load_objects(dataset / "train_objects.jsonl").items():
        image = read_image(dataset, url).astype(int)
        # An object colour in both the first and the last pixel column means it crosses 0/360.
        wraps = any(
            (np.abs(image[:, 0] - COLOURS[o.colour]).sum(-1) < 30).any()
            and (np.abs(image[:, -1] - COLOURS[o.colour]).sum(-1) < 30).any()
            for o in objs
        )
        assert (url in seam) == wraps, url
    assert seam  # every object behind straddles the seam, and many scenes have one


def test_a_new_generator_version_gets_its_own_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    import vlm_resampler.data.synthpano.files as synthpano
    from vlm_resampler.data.datasets import synthpano_root

    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(tmp_path))
    cfg = OmegaConf.create(
        {
            "root": None,
            "seed": 0,
            "num_train": 2,
            "num_val": 1,
            "num_test": 1,
            "erp_width": 128,
            "erp_height": 64,
            "query": "Describe the panorama.",
        }
    )
    current = synthpano_root(cfg)
    monkeypatch.setattr(synthpano, "GENERATOR_VERSION", synthpano.GENERATOR_VERSION - 1)
    assert synthpano_root(cfg) != current and synthpano_root(cfg).parent == current.parent
    monkeypatch.undo()
    # And a folder written by another version is never taken as this one's.
    root = tmp_path / "ds"
    ensure_synthpano(root, seed=0, num_train=2, num_val=1, num_test=1, size=(128, 64))
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == synthpano.GENERATOR_VERSION
    (root / "manifest.json").write_text(json.dumps({**manifest, "version": synthpano.GENERATOR_VERSION - 1}))
    assert not synthpano._existing_matches(root, manifest["params"])
