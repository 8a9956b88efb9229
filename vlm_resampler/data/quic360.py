"""The QuIC-360 CSV layout (columns url, query, annotation; several rows of one image and query
are several references), for the real dataset and for SynthPano alike.

A bad row (empty url or caption, missing, unreadable, truncated or oversized image) is an error naming the file and the row, or,
with `skip_bad_rows`, is left out and reported: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

CSV_COLUMNS = ("url", "query", "annotation")


class BadRow(ValueError):
    """A CSV row that cannot become an example (the message names the file and the row)."""


def over_pixel_limit(img: Image.Image) -> str | None:
    """Why an opened image is refused before decoding (its header declares more pixels than PIL's
    decompression-bomb limit, PIL.Image.MAX_IMAGE_PIXELS), or None."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        return f"{img.width}x{img.height} pixels, over the pixel limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS)"
    return None


def _image_problem(image: Path, check_readable: bool) -> tuple[type[Exception], str] | None:
    """The error a bad image raises, and why; None for a good one."""
    if not image.is_file():
        return FileNotFoundError, f"image not found at {image}"
    if check_readable:
        try:
            with Image.open(image) as img:
                too_large = over_pixel_limit(img)
                if too_large:
                    return BadRow, f"image {image} is {too_large}: refused before decoding"
                img.verify()
            with Image.open(image) as img:
                img.draft("RGB", (img.width // 8 or 1, img.height // 8 or 1))  # JPEG: decode at 1/8 scale, cheap
                img.load()  # verify() does not decode: a truncated file only shows here
        except Image.DecompressionBombError as err:
            return BadRow, f"image {image} is over the pixel limit, refused before decoding ({err})"
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            return BadRow, f"image {image} is unreadable ({err})"
    return None


def _read_text(csv_path: Path) -> str:
    """The CSV as text; a byte sequence that is not UTF-8 is named by line."""
    data = csv_path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{csv_path} line {line}: not UTF-8 text ({err.reason}, byte {data[err.start]:#04x} at offset {err.start}); "
            "save the CSV as UTF-8"
        ) from err


class PathOutsideRoot(ValueError):
    """A url that leads out of the image root (absolute, or through `..` or a link)."""


def _escapes(image: Path, image_root: Path) -> bool:
    return not image.resolve().is_relative_to(image_root.resolve())


def read_quic360_csv(
    csv_path: Path,
    image_root: Path | None = None,
    skip_bad_rows: bool = False,
    check_readable: bool = False,
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
    with io.StringIO(_read_text(csv_path), newline="") as csv_file:
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
            if problem is None and not (row["annotation"] or "").strip():
                problem = (BadRow, "empty caption (annotation)")
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
