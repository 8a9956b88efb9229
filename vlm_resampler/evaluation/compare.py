"""Two evals of the same test items, compared item by item: `launch/compare.py EVAL_A EVAL_B`.

Each eval writes its items' own numbers to item_scores.csv (CIDEr under the set's IDF, the answer
losses with the item's own and the next item's panorama, each question's exact match). The
comparison resamples the panoramas once and reads every metric's mean difference A - B off the
same draws (evaluation/intervals.py): a paired bootstrap, which sees a difference that two
overlapping per-model intervals hide, because both models meet the same hard and easy panoramas.

Torch-free, like the rest of the scoring path.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from vlm_resampler.data.answers import question_kind
from vlm_resampler.errors import UserFacingError
from vlm_resampler.evaluation.intervals import LEVEL, PanoramaBootstrap, central

ITEM_SCORES = "item_scores.csv"
COLUMNS = ("set", "image", "query", "CIDEr", "answer_loss", "answer_loss_images_rotated", "correct")
LOWER_IS_BETTER = ("answer_loss",)


class CompareError(UserFacingError, ValueError):
    """Two evals that cannot be compared item by item; the message says why."""


def item_scores_csv(items: list[dict], ciders: list[float], dependence, answered) -> str:
    """item_scores.csv: a `captions` row per eval item, a `qa` row per question (when asked)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for i, (item, cider) in enumerate(zip(items, ciders, strict=True)):
        losses = (dependence.own[i], dependence.rotated[i]) if dependence is not None else ("", "")
        writer.writerow(["captions", str(item["image"]), item["query"], float(cider), *losses, ""])
    for question, correct in zip(*(answered or ([], [])), strict=True):
        writer.writerow(["qa", str(question["image"]), question["query"], "", "", "", int(correct)])
    return buffer.getvalue()


def read_item_scores(eval_dir: Path) -> tuple[dict, list[dict]]:
    """(metrics.json, the rows of item_scores.csv) of one eval directory."""
    eval_dir = Path(eval_dir)
    missing = [name for name in ("metrics.json", ITEM_SCORES) if not (eval_dir / name).is_file()]
    if missing:
        raise CompareError(
            f"{eval_dir}: no {' and no '.join(missing)}; expected an eval directory "
            f"(<stage dir>/eval/<dataset>-<split>/) written by launch/eval.py"
        )
    with open(eval_dir / ITEM_SCORES, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return json.loads((eval_dir / "metrics.json").read_text()), rows


def paired_values(rows: list[dict]) -> dict[str, tuple[list[float], list[str], list[tuple]]]:
    """metric -> (each item's value, its panorama, its (set, image, query) identity)."""
    out: dict[str, tuple[list[float], list[str], list[tuple]]] = {}

    def add(metric: str, value: float, row: dict) -> None:
        values, units, ids = out.setdefault(metric, ([], [], []))
        values.append(value)
        units.append(row["image"])
        ids.append((row["set"], row["image"], row["query"]))

    for row in rows:
        if row["set"] == "captions":
            add("CIDEr", float(row["CIDEr"]), row)
            if row["answer_loss"]:
                own, rotated = float(row["answer_loss"]), float(row["answer_loss_images_rotated"])
                add("image_gap", rotated - own, row)
                add("answer_loss", own, row)
        elif row["set"] == "qa":
            add("QA", float(row["correct"]), row)
            add(f"QA_{question_kind(row['query'])}", float(row["correct"]), row)
    return out


def compare(a_dir: Path, b_dir: Path) -> dict:
    """Each metric both evals hold: A's and B's value, the mean difference A - B with its interval,
    and the share of resamples in which A's mean is above B's."""
    (a_metrics, a_rows), (b_metrics, b_rows) = read_item_scores(a_dir), read_item_scores(b_dir)
    for key in ("dataset", "split"):
        if a_metrics.get(key) != b_metrics.get(key):
            raise CompareError(f"{a_dir} is {key} {a_metrics.get(key)!r} but {b_dir} is {b_metrics.get(key)!r}")
    a_values, b_values = paired_values(a_rows), paired_values(b_rows)
    bootstrap = PanoramaBootstrap([row["image"] for row in a_rows])
    metrics = {}
    for metric in (m for m in a_values if m in b_values):
        (a, units, a_ids), (b, _, b_ids) = a_values[metric], b_values[metric]
        if a_ids != b_ids:
            where = next((i for i, (x, y) in enumerate(zip(a_ids, b_ids)) if x != y), min(len(a_ids), len(b_ids)))
            raise CompareError(
                f"{metric}: the two evals scored different items ({len(a_ids)} and {len(b_ids)}; first difference "
                f"at item {where}): compare evals of the same split with the same max_items"
            )
        differences = bootstrap.means([x - y for x, y in zip(a, b)], units)
        drawn = differences[~np.isnan(differences)]
        metrics[metric] = {
            "A": round(float(np.mean(a)), 4),
            "B": round(float(np.mean(b)), 4),
            "A_minus_B": round(float(np.mean(a) - np.mean(b)), 4),
            "interval": central(differences),
            "A_above_B": round(float(np.mean(drawn > 0)), 4),
            "items": len(a),
        }
    return {"A": str(a_dir), "B": str(b_dir), "dataset": a_metrics.get("dataset"), "split": a_metrics.get("split")} | {
        "bootstrap": bootstrap.describe(),
        "metrics": metrics,
    }


def against_best(eval_dirs: dict, best: dict[str, object]) -> dict[str, dict]:
    """Each eval's difference from the best one, per metric, paired over the same panoramas.

    `eval_dirs` maps a key (a job, a trial) to its eval directory; `best` maps a metric to the key
    of the best eval on it. Returns metric -> key -> compare()'s numbers for that metric with A the
    key's eval and B the best's (so `A_minus_B` is this - best), or a string saying why the two could
    not be paired. The best itself is left out. Each pair is compared once, whatever the metrics."""
    compared: dict[tuple, dict | str] = {}
    out: dict[str, dict] = {}
    for metric, best_key in best.items():
        rows = out.setdefault(metric, {})
        for key, eval_dir in eval_dirs.items():
            if key == best_key:
                continue
            if (key, best_key) not in compared:
                try:
                    compared[key, best_key] = compare(eval_dir, eval_dirs[best_key])
                except CompareError as err:
                    compared[key, best_key] = str(err)
            result = compared[key, best_key]
            if isinstance(result, str):
                rows[key] = result
            elif metric not in result["metrics"]:
                rows[key] = f"{metric} has no per-item scores in both evals"
            else:
                rows[key] = result["metrics"][metric] | {"panoramas": result["bootstrap"]["panoramas"]}
    return out


def difference_text(numbers: dict, digits: int = 3) -> str:
    """'-0.123 [-0.402, +0.151]': a difference with its interval."""
    low, high = numbers["interval"]
    return f"{numbers['A_minus_B']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def holds_zero(numbers: dict) -> bool:
    """Whether the interval of the difference holds 0: the test set cannot tell the two apart."""
    low, high = numbers["interval"]
    return low <= 0 <= high


def cells_against_best(differences: dict, best_key) -> tuple[dict, list, dict]:
    """For a table of one metric of against_best(): (key -> its cell: "best", the difference with
    its interval, or "-"; the keys whose interval holds 0; key -> why it was not paired)."""
    cells, tied, unpaired = {best_key: "best"}, [], {}
    for key, numbers in differences.items():
        if isinstance(numbers, dict):
            cells[key] = difference_text(numbers)
            if holds_zero(numbers):
                tied.append(key)
        else:
            cells[key], unpaired[key] = "-", str(numbers)
    return cells, tied, unpaired


def comparison_table(result: dict) -> str:
    boot = result["bootstrap"]
    lines = [
        f"A: {result['A']}",
        f"B: {result['B']}",
        f"{result['dataset']}/{result['split']}, paired over the same {boot['panoramas']} panoramas "
        f"({boot['resamples']} bootstrap resamples, seed {boot['seed']}; {LEVEL:.0%} intervals of A - B):",
        f"{'':<16}{'A':>9}{'B':>9}{'A - B':>9}   {'interval of A - B':<20}{'A above B in':>14}",
    ]
    for metric, m in result["metrics"].items():
        low, high = m["interval"]
        better = " (lower is better)" if metric in LOWER_IS_BETTER else ""
        lines.append(
            f"{metric:<16}{m['A']:>9.4f}{m['B']:>9.4f}{m['A_minus_B']:>+9.4f}   "
            f"{f'[{low:+.4f}, {high:+.4f}]':<20}{m['A_above_B']:>13.0%} of resamples{better}"
        )
    lines.append("an interval that holds 0 does not tell the two apart on this test set")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="launch/compare.py",
        description="Compare two evals of the same test items: the paired bootstrap of A - B per metric.",
    )
    parser.add_argument("eval_a", type=Path, help="an eval directory (<stage dir>/eval/<dataset>-<split>)")
    parser.add_argument("eval_b", type=Path, help="the other eval directory, of the same split")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the comparison to FILE")
    args = parser.parse_args(argv)
    try:
        result = compare(args.eval_a, args.eval_b)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not result["metrics"]:
        print("error: the two evals share no metric", file=sys.stderr)
        return 2
    print(comparison_table(result))
    if args.json:
        from vlm_resampler.runs.atomic import write_json

        write_json(args.json, result)
        print(f"comparison written to {args.json}")
    return 0
