"""The dataset on disk (the layout in this package's docstring): generated atomically, reused
when its manifest matches, and read back."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

from vlm_resampler.data.synthpano.objects import SceneObject
from vlm_resampler.data.synthpano.render import crosses_seam, png_bytes, render_scene
from vlm_resampler.data.synthpano.scene import SPLITS, sample_scene, scene_rng
from vlm_resampler.data.synthpano.text import DEFAULT_QUERY, question_answers

GENERATOR_NAME = "vlm_resampler.data.synthpano"
GENERATOR_VERSION = 3  # 2: question/answer pairs, conversations, seam flag; 3: sizes, objects above/below
CSV_COLUMNS = ("url", "query", "annotation")

# --------------------------------------------------------------------------- dataset files


def _validate_params(seed: int, counts: dict[str, int], size: tuple[int, int], query: str) -> tuple[int, int]:
    if int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    for split, count in counts.items():
        if int(count) != count or count < 0:
            raise ValueError(f"num_{split} must be an integer >= 0, got {count!r}")
    if len(size) != 2:
        raise ValueError(f"size must be (width, height), got {size!r}")
    width, height = int(size[0]), int(size[1])
    if height < 16 or width != 2 * height:
        raise ValueError(f"size must be (width, height) with width == 2 * height >= 32, got {size!r}")
    if not query.strip():
        raise ValueError("query must be a non-empty string")
    return height, width


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_split(out_dir: Path, split: str, count: int, seed: int, erp_hw: tuple[int, int], query: str) -> int:
    """Render one split into ``out_dir``; returns the number of caption CSV rows written.

    Per split: ``<split>.csv`` (captions), ``<split>_qa.csv`` (question/answer pairs), both in the
    QuIC-360 layout; ``<split>_conversations.jsonl`` (the same as chat turns, one line per image);
    ``<split>_objects.jsonl`` (the scene's objects and whether one straddles the seam).
    """
    rows = 0
    with (
        open(out_dir / f"{split}.csv", "w", newline="", encoding="utf-8") as csv_file,
        open(out_dir / f"{split}_qa.csv", "w", newline="", encoding="utf-8") as qa_file,
        open(out_dir / f"{split}_conversations.jsonl", "w", encoding="utf-8") as conversations_file,
        open(out_dir / f"{split}_objects.jsonl", "w", encoding="utf-8") as objects_file,
    ):
        writer, qa_writer = csv.writer(csv_file, lineterminator="\n"), csv.writer(qa_file, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        qa_writer.writerow(CSV_COLUMNS)
        for index in range(count):
            scene = sample_scene(scene_rng(seed, split, index))
            url = f"images/{split}_{index:05d}.png"
            (out_dir / url).write_bytes(png_bytes(render_scene(scene, erp_hw)))
            for caption in scene.captions:
                writer.writerow((url, query, caption))
                rows += 1
            pairs = question_answers(scene.objects)
            qa_writer.writerows((url, question, answer) for question, answer in pairs)
            turns = [(query, scene.captions[0]), *pairs]
            conversation = [
                {"from": role, "value": value}
                for question, answer in turns
                for role, value in (("human", question), ("gpt", answer))
            ]
            conversation[0]["value"] = "<image>\n" + conversation[0]["value"]
            conversations_file.write(json.dumps({"image": url, "conversations": conversation}) + "\n")
            seam = any(crosses_seam(o, erp_hw) for o in scene.objects)
            record = {"url": url, "objects": [asdict(o) for o in scene.objects], "seam": seam}
            objects_file.write(json.dumps(record, sort_keys=True) + "\n")
    return rows


def _params(seed: int, num_train: int, num_val: int, num_test: int, size: tuple[int, int], query: str) -> dict:
    return {
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_test": int(num_test),
        "size": [int(size[0]), int(size[1])],
        "query": query,
    }


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is swapped out first, then deleted."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)


def generate_synthpano(
    root: Path,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 100,
    num_test: int = 100,
    size: tuple[int, int] = (512, 256),
    query: str = DEFAULT_QUERY,
) -> dict[str, Path]:
    """(Re)generate the dataset at ``root`` atomically; returns split -> CSV path.

    ``size`` is (width, height). Everything is a pure function of the arguments: the same
    arguments give byte-identical files. Splits use independent random streams derived from
    ``seed``, so they share no scene.
    """
    root = Path(root)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    erp_hw = _validate_params(seed, counts, size, query)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        (staging / "images").mkdir()
        rows = {split: _write_split(staging, split, int(n), int(seed), erp_hw, query) for split, n in counts.items()}
        manifest = {
            "generator": GENERATOR_NAME,
            "version": GENERATOR_VERSION,
            "params": _params(seed, num_train, num_val, num_test, size, query),
            "counts": {split: {"images": int(counts[split]), "rows": rows[split]} for split in SPLITS},
            "csv_sha256": {split: _sha256(staging / f"{split}.csv") for split in SPLITS},
            "qa_csv_sha256": {split: _sha256(staging / f"{split}_qa.csv") for split in SPLITS},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _replace_dir(staging, root)
    finally:
        # Only still present if something failed before the rename.
        if staging.exists():
            shutil.rmtree(staging)
    return {split: root / f"{split}.csv" for split in SPLITS}


def _existing_matches(root: Path, params: dict) -> bool:
    """True when ``root`` holds a complete dataset generated with exactly ``params``."""
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return False
    if manifest.get("version") != GENERATOR_VERSION or manifest.get("params") != params:
        return False
    for split in SPLITS:
        csv_path = root / f"{split}.csv"
        if not csv_path.is_file() or _sha256(csv_path) != manifest.get("csv_sha256", {}).get(split):
            return False
        qa_path = root / f"{split}_qa.csv"
        if not qa_path.is_file() or _sha256(qa_path) != manifest.get("qa_csv_sha256", {}).get(split):
            return False
        for index in range(params[f"num_{split}"]):
            if not (root / "images" / f"{split}_{index:05d}.png").is_file():
                return False
    return True


def ensure_synthpano(
    root: Path,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 100,
    num_test: int = 100,
    size: tuple[int, int] = (512, 256),
    query: str = DEFAULT_QUERY,
) -> dict[str, Path]:
    """Reuse the dataset at ``root`` if its manifest matches these parameters, else regenerate it."""
    root = Path(root)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    _validate_params(seed, counts, size, query)
    if _existing_matches(root, _params(seed, num_train, num_val, num_test, size, query)):
        return {split: root / f"{split}.csv" for split in SPLITS}
    import time

    started = time.perf_counter()
    csvs = generate_synthpano(root, seed, num_train, num_val, num_test, size, query)
    print(
        f"one-time build: SynthPano ({num_train}/{num_val}/{num_test} panoramas) generated in "
        f"{time.perf_counter() - started:.0f} s into {root}",
        flush=True,
    )
    return csvs


# --------------------------------------------------------------------------- reading


def load_quic360_csv(csv_path: Path) -> list[dict]:
    """Read a QuIC-360-style CSV into one record per (url, query), in first-appearance order.

    Returns ``[{"image": Path, "query": str, "references": [str, ...]}, ...]``; relative urls are
    resolved against the CSV's folder. Any bad row is an error naming the file and the row.
    """
    from vlm_resampler.data.quic360 import read_quic360_csv

    return read_quic360_csv(csv_path)[0]


def load_objects(jsonl_path: Path) -> dict[str, list[SceneObject]]:
    """Read ``<split>_objects.jsonl``: url -> objects of that image."""
    records = {}
    for line in Path(jsonl_path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        records[record["url"]] = [SceneObject(**obj) for obj in record["objects"]]
    return records


def seam_urls(jsonl_path: Path) -> set[str]:
    """Urls (as in the CSVs) of the images where an object straddles the 0/360 seam."""
    lines = Path(jsonl_path).read_text(encoding="utf-8").splitlines()
    return {record["url"] for record in map(json.loads, lines) if record["seam"]}
