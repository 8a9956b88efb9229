"""`launch/eval.py --csv-input FILE`: scores a predictions file without any model (and without
importing torch), in both layouts; bad files stop with exit 2 naming file, row and column."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_resampler.evaluation import metrics
from vlm_resampler.evaluation.csv_input import PredictionsFileError, read_predictions, score_file
from vlm_resampler.evaluation.metrics import METRIC_NAMES, CaptionScorer

from conftest import REPO_ROOT, run_cli

PARITY = Path(__file__).parent / "data" / "caption_parity.json"


def parity_items() -> list[dict]:
    return json.loads(PARITY.read_text(encoding="utf-8"))["items"]


def write_wide(path: Path, items: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "query", "prediction", "references"])
        for item in items:
            writer.writerow(
                [item["image"], item["query"], item["prediction"], json.dumps(item["references"], ensure_ascii=False)]
            )
    return path


def write_long(path: Path, items: list[dict], ref_column: str = "annotation", image_column: str = "url") -> Path:
    """QuIC-360 style: one reference per row, rows of one item interleaved with others'."""
    rows = [(item, ref) for item in items for ref in item["references"]]
    rows = rows[::2] + rows[1::2]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([image_column, "query", "prediction", ref_column])
        for item, ref in rows:
            writer.writerow([item["image"], item["query"], item["prediction"], ref])
    return path


def test_both_layouts_read_the_same_items(tmp_path):
    items = parity_items()
    wide, layout = read_predictions(write_wide(tmp_path / "wide.csv", items))
    assert "JSON list" in layout
    long, layout = read_predictions(write_long(tmp_path / "long.csv", items, "reference", "image"))
    assert layout == "one reference per row"
    as_dicts = lambda found: {(i.image, i.query): (i.prediction, sorted(i.references)) for i in found}  # noqa: E731
    expected = {(i["image"], i["query"]): (i["prediction"], sorted(i["references"])) for i in items}
    assert as_dicts(wide) == expected and as_dicts(long) == expected
    assert [i.image for i in wide] == [i["image"] for i in items], "items keep the file's order"


def test_cli_scores_a_quic360_style_file_without_importing_torch(tmp_path):
    items = parity_items()
    (tmp_path / "in").mkdir()
    source = write_long(tmp_path / "in" / "predictions.csv", items)
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            str(REPO_ROOT / "launch" / "eval.py"),
            "--csv-input",
            str(source),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "json" in imported, "no -X importtime output to check"
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "transformers", "hydra"))
    assert not heavy, f"scoring a CSV imported {heavy[:5]}"
    assert not (tmp_path / "in" / "metrics.json").exists()
    results = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert results["n_items"] == len(items) and set(results["model"]) == set(METRIC_NAMES)
    assert "stanford-corenlp" in results["unavailable"]["SPICE"]
    # Same numbers as scoring the items directly (the parity test ties those to the toolkit).
    with CaptionScorer(with_meteor=False) as scorer:
        direct = scorer.score([i["prediction"] for i in items], [i["references"] for i in items])
    for name, value in direct.items():
        assert results["model"][name] == pytest.approx(value, abs=1e-9), name
    assert "CIDEr" in done.stdout and "metrics written to" in done.stdout
    # The file's images are the panoramas its CIDEr interval resamples.
    intervals = results["intervals"]
    assert intervals["panoramas"] == len({i["image"] for i in items}) and set(intervals["bounds"]) == {"CIDEr"}
    low, high = intervals["bounds"]["CIDEr"]
    assert low <= results["model"]["CIDEr"] <= high and low < high
    assert f"[{low:.4f}, {high:.4f}]: 95% intervals" in done.stdout


def test_metrics_json_goes_next_to_the_csv_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "CaptionScorer", lambda: CaptionScorer(with_meteor=False))  # no JVM start: fast
    source = write_wide(tmp_path / "p.csv", parity_items()[:4])
    results, target = score_file(source)
    assert target == tmp_path / "metrics.json" and json.loads(target.read_text())["n_items"] == 4
    assert results["model"]["CIDEr"] >= 0


BAD_FILES = {
    "empty": ("", r"bad\.csv: the file is empty"),
    "header only": ("image,query,prediction,references\n", r"bad\.csv: a header but no rows"),
    "missing column": (
        'image,query,references\na.jpg,q,"[""x""]"\n',
        r"bad\.csv: line 1 \(header\): missing column\(s\) prediction",
    ),
    "bad json": (
        'image,query,prediction,references\na.jpg,q,p,"[""x""]"\nb.jpg,q,p,"[""x"", y]"\n',
        r"bad\.csv: row 2 \(line 3\), column references: not valid JSON",
    ),
    "not a list": (
        'image,query,prediction,references\na.jpg,q,p,"{""a"": 1}"\n',
        r"row 1 \(line 2\), column references: expected a JSON list of strings",
    ),
    "empty list": (
        "image,query,prediction,references\na.jpg,q,p,[]\n",
        r"row 1 \(line 2\), column references: needs at least one non-empty reference",
    ),
    "predictions disagree": (
        "url,query,prediction,annotation\na.jpg,q,p1,r1\na.jpg,q,p2,r2\n",
        r"row 2 \(line 3\), column prediction: 'p2' differs from row 1's 'p1'",
    ),
    "short row": ("image,query,prediction,references\na.jpg,q\n", r"row 1 \(line 2\), column prediction: missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_an_error_naming_file_row_and_column(tmp_path, case):
    content, message = BAD_FILES[case]
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PredictionsFileError, match=message):
        read_predictions(path)


def test_cli_exits_2_with_the_message_on_a_bad_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_FILES["bad json"][0], encoding="utf-8")
    done = run_cli("eval.py", "--csv-input", str(path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: {path}: row 2 (line 3), column references: not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "metrics.json").exists()
    missing = run_cli("eval.py", "--csv-input", str(tmp_path / "nothing.csv"))
    assert missing.returncode == 2 and "nothing.csv: no such file" in missing.stderr
