"""The QuIC-360 CSV layout (columns url, query, annotation; several rows of one image and query
are several references), for the real dataset and for SynthPano alike.

A bad row (empty url, missing or unreadable image) is an error naming the file and the row, or,
with `skip_bad_rows`, is left out and reported: nothing is dropped silently.
"""
from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image, UnidentifiedImageError

CSV_COLUMNS = ("url", "query", "annotation")


class BadRow(ValueError):
    """A CSV row that cannot become an example (the message names the file and the row)."""


def _image_problem(image: Path, check_readable: bool) -> tuple[type[Exception], str] | None:
    """The error a bad image raises, and why; None for a good one."""
    if not image.is_file():
        return FileNotFoundError, f"image not found at {image}"
    if check_readable:
        try:
            with Image.open(image) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            return BadRow, f"image {image} is unreadable ({err})"
    return None


class PathOutsideRoot(ValueError):
    """A url that leads out of the image root (absolute, or through `..` or a link)."""


def _escapes(image: Path, image_root: Path) -> bool:
    return not image.resolve().is_relative_to(image_root.resolve())


def read_quic360_csv(
    csv_path: Path, image_root: Path | None = None, skip_bad_rows: bool = False, check_readable: bool = False,
    allow_outside_root: bool = False,
) -> tuple[list[dict], list[str]]:
    """One record {image, query, references} per (url, query), in first-appearance order, and the
    bad rows that were skipped (each "file row N: why"). Relative urls resolve against
    `image_root` (default: the CSV's folder); a url that leads out of it (absolute, `..`, a link)
    is refused, whatever skip_bad_rows says, unless `allow_outside_root`."""
    csv_path = Path(csv_path)
    image_root = Path(image_root) if image_root is not None else csv_path.parent
    groups: dict[tuple[str, str], dict] = {}
    bad_images: dict[str, tuple[type[Exception], str]] = {}
    skipped: list[str] = []
    with open(csv_path, newline="", encoding="utf-8") as csv_file:
        reader = csv.DictReader(csv_file)
        found = reader.fieldnames or []
        missing = [column for column in CSV_COLUMNS if column not in found]
        if missing:
            raise ValueError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; "
                f"expected {', '.join(CSV_COLUMNS)}, found {', '.join(found) or 'no header'}"
            )
        for row_number, row in enumerate(reader, start=1):
            url, query = (row["url"] or "").strip(), row["query"] or ""
            where = f"{csv_path} row {row_number} (line {reader.line_num})"
            image = Path(url) if Path(url).is_absolute() else image_root / url
            if url and not allow_outside_root and _escapes(image, image_root):
                raise PathOutsideRoot(
                    f"{where}: url {url!r} leads out of the image root {image_root} (to {image.resolve()}); "
                    "refused (data.allow_paths_outside_root=true accepts such urls)"
                )
            problem = (BadRow, "empty url") if not url else bad_images.get(url)
            if problem is None and (url, query) not in groups:
                problem = _image_problem(image, check_readable)
                if problem:
                    bad_images[url] = problem
            if problem:
                error, why = problem
                if not skip_bad_rows:
                    raise error(f"{where}: {why} (data.skip_bad_rows=true leaves such rows out and counts them)")
                skipped.append(f"{where}: {why}")
                continue
            groups.setdefault((url, query), {"image": image, "query": query, "references": []})
            groups[(url, query)]["references"].append(row["annotation"] or "")
    return list(groups.values()), skipped
