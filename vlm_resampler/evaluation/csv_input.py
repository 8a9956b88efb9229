"""Score an existing predictions file without any model: `launch/eval.py --csv-input FILE`.

Two layouts are read:
  - one row per item: image, query, prediction, references (a JSON list of strings), as the
    eval's own predictions.csv;
  - QuIC-360 style, one reference per row in `reference` or `annotation` (image may be `url`),
    rows of the same (image, query) being one item whose prediction must be the same on each.

Kept free of torch and transformers (checked by a test): scoring a file takes seconds, not
the import time of a deep learning stack.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlm_resampler.errors import UserFacingError

LIST_COLUMN = "references"
ONE_PER_ROW = ("reference", "annotation")
IMAGE_COLUMNS = ("image", "url")


class PredictionsFileError(UserFacingError, ValueError):
    """A problem in the input file; the message names the file, and the row and column where it can."""


@dataclass
class Item:
    image: str
    query: str
    prediction: str
    references: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


def read_predictions(path: Path) -> tuple[list[Item], str]:
    """Items in first-appearance order, and a name for the layout that was read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often write a BOM
    except FileNotFoundError:
        raise PredictionsFileError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise PredictionsFileError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not text.strip():
        raise PredictionsFileError(
            f"{path}: the file is empty; expected a header line image,query,prediction,references and one row per item"
        )
    # newline="": line breaks inside quoted fields stay part of the field, as csv expects.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    image_col = next((c for c in IMAGE_COLUMNS if c in header), None)
    ref_col = next((c for c in (LIST_COLUMN, *ONE_PER_ROW) if c in header), None)
    missing = [
        name
        for name, found in (("image", image_col), ("query", "query" in header), ("prediction", "prediction" in header))
        if not found
    ]
    if ref_col is None:
        missing.append("references (or reference / annotation, one per row)")
    if missing:
        raise PredictionsFileError(
            f"{path}: line 1 (header): missing column(s) {', '.join(missing)}; found {', '.join(header) or 'nothing'}"
        )
    try:
        items = group_rows(path, reader, header, image_col, ref_col)
    except csv.Error as err:
        raise PredictionsFileError(f"{path}: line {reader.line_num}: {err}") from None
    if not items:
        raise PredictionsFileError(f"{path}: a header but no rows")
    layout = "one row per item, references as a JSON list" if ref_col == LIST_COLUMN else f"one {ref_col} per row"
    return list(items.values()), layout


def group_rows(
    path: Path, reader: csv.DictReader, header: list[str], image_col: str, ref_col: str
) -> dict[tuple[str, str], Item]:
    items: dict[tuple[str, str], Item] = {}
    for row_number, row in enumerate(reader, start=1):
        where = f"{path}: row {row_number} (line {reader.line_num})"
        if None in row:
            raise PredictionsFileError(f"{where}: more fields than the header's {len(header)}")
        values = {name: row[name] for name in (image_col, "query", "prediction", ref_col)}
        for name, value in values.items():
            if value is None:
                raise PredictionsFileError(
                    f"{where}, column {name}: missing (the row has fewer fields than the header)"
                )
        image, query, prediction = values[image_col].strip(), values["query"], values["prediction"]
        if not image:
            raise PredictionsFileError(f"{where}, column {image_col}: empty")
        references = parse_references(values[ref_col], ref_col, where)
        key = (image, query)
        if key not in items:
            items[key] = Item(image, query, prediction)
        elif ref_col == LIST_COLUMN:
            raise PredictionsFileError(
                f"{where}: ({image_col}={image!r}, query={query!r}) is already row "
                f"{items[key].rows[0]}; with a references list each item is one row"
            )
        elif items[key].prediction != prediction:
            raise PredictionsFileError(
                f"{where}, column prediction: {prediction!r} differs from row "
                f"{items[key].rows[0]}'s {items[key].prediction!r} for the same "
                f"({image_col}={image!r}, query={query!r})"
            )
        items[key].references += references
        items[key].rows.append(row_number)
    return items


def parse_references(value: str, column: str, where: str) -> list[str]:
    if column != LIST_COLUMN:
        if not value.strip():
            raise PredictionsFileError(f"{where}, column {column}: empty reference")
        return [value]
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise PredictionsFileError(
            f"{where}, column {column}: not valid JSON ({err.msg} at character "
            f"{err.pos}): {value[:80]!r}; expected a list of strings like "
            '["a red door.", "a door, red."]'
        ) from None
    if not isinstance(parsed, list) or not all(isinstance(r, str) for r in parsed):
        raise PredictionsFileError(f"{where}, column {column}: expected a JSON list of strings, found {value[:80]!r}")
    if not parsed or not all(r.strip() for r in parsed):
        raise PredictionsFileError(
            f"{where}, column {column}: needs at least one non-empty reference, found {value[:80]!r}"
        )
    return parsed


def score_file(path: Path, out_dir: Path | None = None) -> tuple[dict, Path]:
    """Read, score and write metrics.json (next to the file unless `out_dir`); returns both."""
    from vlm_resampler.evaluation.intervals import PanoramaBootstrap
    from vlm_resampler.evaluation.metrics import CaptionScorer
    from vlm_resampler.runs.atomic import write_json

    started = time.perf_counter()
    path = Path(path)
    items, layout = read_predictions(path)
    out = Path(out_dir) if out_dir is not None else path.parent
    with CaptionScorer() as scorer:
        scores = scorer.score_items([i.prediction for i in items], [i.references for i in items])
        unavailable = dict(scorer.unavailable)
    images = [i.image for i in items]
    bootstrap = PanoramaBootstrap(images)
    results = {
        "predictions_csv": str(path.resolve()),
        "layout": layout,
        "n_items": len(items),
        "n_references": sum(len(i.references) for i in items),
        "model": scores.corpus,
        "intervals": bootstrap.record({"CIDEr": bootstrap.interval(scores.per_item["CIDEr"], images)}),
        "unavailable": unavailable,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    target = out / "metrics.json"
    if target.exists():
        print(f"replacing {target}")
    write_json(target, results)
    return results, target


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch/eval.py --csv-input",
        description="Score an existing predictions CSV with the COCO caption metrics; no model is loaded.",
    )
    parser.add_argument(
        "--csv-input",
        required=True,
        type=Path,
        metavar="FILE",
        help="columns image,query,prediction,references (a JSON list), or one reference/annotation per row",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="where metrics.json goes (default: the CSV's folder)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from vlm_resampler.evaluation.intervals import cider_interval_line
    from vlm_resampler.evaluation.summary import scores_table

    args = parse_args(argv)
    try:
        results, target = score_file(args.csv_input, args.out)
    except PredictionsFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.csv_input}: {results['n_items']} items, {results['n_references']} references ({results['layout']})")
    print(scores_table([("model", results["model"])]))
    print(cider_interval_line(results))
    for name, reason in results["unavailable"].items():
        print(f"{name} not computed: {reason}")
    print(f"metrics written to {target}")
    return 0
