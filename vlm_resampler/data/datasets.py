"""Caption datasets over panoramas: items from a QuIC-360 style CSV, images as [3, H, W] floats."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vlm_resampler.cache import cache_root
from vlm_resampler.data.quic360 import over_pixel_limit
from vlm_resampler.errors import UserFacingError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class BadImageError(UserFacingError, ValueError):
    """An image that cannot be loaded (gone, unreadable, truncated, too large); names the file."""


def load_panorama(path: Path, width: int, height: int) -> torch.Tensor:
    """An ERP image as float [3, height, width] in [0, 1] (resized if it has another size).
    A missing, unreadable, truncated or oversized image raises BadImageError naming the file."""
    try:
        with Image.open(path) as img:
            too_large = over_pixel_limit(img)  # from the header, before the pixels are allocated
            if too_large:
                raise BadImageError(
                    f"{path}: {too_large}; refused before decoding (a decompression bomb, "
                    "or a panorama to downscale first)"
                )
            img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as err:  # PIL's own refusal, at twice the limit
        raise BadImageError(f"{path}: over the pixel limit, refused before decoding ({err})") from err
    except FileNotFoundError as err:
        raise BadImageError(f"{path}: image not found (deleted or moved after the data was checked?)") from err
    except (OSError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
        raise BadImageError(f"{path}: image unreadable ({type(err).__name__}: {err})") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def synthpano_root(data_cfg) -> Path:
    """`data.root`, else a cache folder keyed by the settings and the generator version: a new
    generator writes a new folder instead of regenerating one that other processes may read."""
    if data_cfg.root:
        return Path(data_cfg.root)
    from vlm_resampler.data.synthpano.files import GENERATOR_VERSION

    settings = {
        k: data_cfg[k] for k in ("seed", "num_train", "num_val", "num_test", "erp_width", "erp_height", "query")
    }
    settings["generator_version"] = GENERATOR_VERSION
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return cache_root() / "data" / f"synthpano-{digest}"


TASKS = ("caption", "qa")


def prepare_split(data_cfg, split: str, task: str = "caption") -> list[dict]:
    """Items {image, query, references} of one split and task (captions, or SynthPano's
    question/answer pairs); SynthPano is generated on first use."""
    return load_split(data_cfg, split, task)[0]


def load_split(data_cfg, split: str, task: str = "caption") -> tuple[list[dict], list[str]]:
    """`prepare_split`, plus the bad rows that `data.skip_bad_rows` left out (logged here)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {list(SPLITS)}")
    if task not in TASKS:
        raise ValueError(f"data task {task!r}: expected one of {list(TASKS)}")
    if data_cfg.name == "synthpano":
        return synthpano_split(data_cfg, split, task), []
    if data_cfg.name == "quic360":
        return quic360_split(data_cfg, split, task)
    raise ValueError(f"data.name={data_cfg.name!r}: expected 'synthpano' or 'quic360'")


def synthpano_split(data_cfg, split: str, task: str) -> list[dict]:
    from vlm_resampler.data.synthpano.files import ensure_synthpano, load_quic360_csv

    csvs = ensure_synthpano(
        synthpano_root(data_cfg),
        seed=int(data_cfg.seed),
        num_train=int(data_cfg.num_train),
        num_val=int(data_cfg.num_val),
        num_test=int(data_cfg.num_test),
        size=(int(data_cfg.erp_width), int(data_cfg.erp_height)),
        query=str(data_cfg.query),
    )
    if task == "qa":
        return load_quic360_csv(csvs[split].with_name(f"{split}_qa.csv"))
    return load_quic360_csv(csvs[split])


def quic360_split(data_cfg, split: str, task: str) -> tuple[list[dict], list[str]]:
    from vlm_resampler.data.quic360 import read_quic360_csv

    if task != "caption":
        raise ValueError(f"data=quic360 has captions only; task {task!r} needs data=synthpano")
    root = Path(data_cfg.root)
    csv_path = root / data_cfg.splits[split]
    if not csv_path.is_file():
        raise FileNotFoundError(f"data.splits.{split}: {csv_path} not found (data.root={data_cfg.root!r})")
    image_root = root / data_cfg.image_dir if data_cfg.image_dir else csv_path.parent
    allow = data_cfg.get("allow_paths_outside_root", False)
    if not isinstance(allow, bool):
        raise ValueError(f"data.allow_paths_outside_root={allow!r}: expected true or false")
    items, skipped = read_quic360_csv(
        csv_path, image_root, bool(data_cfg.skip_bad_rows), check_readable=True, allow_outside_root=allow
    )
    if skipped:
        log.warning(
            "%s: skipped %d bad row(s) (data.skip_bad_rows=true), first: %s", csv_path, len(skipped), skipped[0]
        )
    return items, skipped


def training_items(data_cfg) -> list[dict]:
    """The train split of every task in `data.train_tasks`, in that order."""
    tasks = list(data_cfg.train_tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise ValueError(f"data.train_tasks={tasks}: expected a non-empty list of {list(TASKS)}")
    return [item for task in tasks for item in prepare_split(data_cfg, "train", task)]


class CaptionExamples(Dataset):
    """One example per (image, query, reference): every reference is a training target.

    `features` (training/feature_cache.FeatureTable): the frozen vision tower's view features by
    image path, served instead of the panorama. `facts`: image path -> object facts
    (data/object_facts.py), added to each example when a stage regresses onto object codes."""

    def __init__(self, items: list[dict], width: int, height: int, features=None, facts: dict | None = None) -> None:
        self.rows = [(item, ref) for item in items for ref in item["references"]]
        self.width, self.height = width, height
        self.features, self.facts = features, facts

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        item, reference = self.rows[index]
        example = {"query": item["query"], "answer": reference}
        example |= image_input(item["image"], self.width, self.height, self.features)
        if self.facts is not None:
            example["facts"] = self.facts[str(item["image"])]
        return example


def image_input(image, width: int, height: int, features=None) -> dict:
    """{"view_features": ...} from the feature table when there is one, else {"panorama": ...}."""
    if features is not None:
        return {"view_features": features[str(image)]}
    return {"panorama": load_panorama(Path(image), width, height)}


class EvalItems(Dataset):
    """One example per (image, query) with all its references."""

    def __init__(self, items: list[dict], width: int, height: int) -> None:
        self.items = items
        self.width, self.height = width, height

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return {
            "panorama": load_panorama(item["image"], self.width, self.height),
            "query": item["query"],
            "references": item["references"],
            "image": str(item["image"]),
        }


class Panoramas(Dataset):
    """Each distinct image once (the vision stage needs no text); `features` as in CaptionExamples."""

    def __init__(self, items: list[dict], width: int, height: int, features=None) -> None:
        self.images = sorted({str(item["image"]) for item in items})
        self.width, self.height = width, height
        self.features = features

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return image_input(self.images[index], self.width, self.height, self.features)
