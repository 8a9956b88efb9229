"""Evaluate one checkpoint directory: rebuild, generate, score, write, summarise."""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vlm_resampler.data.datasets import EvalItems, load_split, prepare_split
from vlm_resampler.errors import OutOfGpuMemory, first_line
from vlm_resampler.evaluation.compare import ITEM_SCORES, item_scores_csv
from vlm_resampler.evaluation.device import autocast, batch_to, check_eval_precision, describe, eval_device
from vlm_resampler.evaluation.generate import predict_items
from vlm_resampler.evaluation.intervals import PanoramaBootstrap
from vlm_resampler.evaluation.metrics import CaptionScorer, require_java
from vlm_resampler.evaluation.report import Card, example_images, render_report
from vlm_resampler.evaluation.settings import GenerationSettings, ReportSettings, compute_settings, scores_meteor
from vlm_resampler.evaluation.summary import summary_table
from vlm_resampler.evaluation.synthpano_eval import (
    QA_MAX_NEW_TOKENS,
    answer_hits,
    exact_match,
    qa_intervals,
    qa_items_for,
    seam_subsets,
)
from vlm_resampler.runs import layout
from vlm_resampler.runs.atomic import write_json, write_text
from vlm_resampler.runs.load import LoadedStage, build_model, load_stage
from vlm_resampler.runs.locate import resolve_checkpoint_dir
from vlm_resampler.runs.provenance import RECONSTRUCTED, UserSettings
from vlm_resampler.runs.reconstruct_parts import BACKBONE_PARTS, GROUP_OF_PART

log = logging.getLogger(__name__)
# Where a command-line group of eval.yaml lives in a checkpoint's model tree.
MODEL_PATHS = {
    "resampler": "model.resampler",
    "view": "model.views",
    "projector": "model.projector",
    "model": "model",
    "prompt": "prompt",
    "backbone": "backbone",
}


def command_line_overrides() -> list[tuple[str, str]]:
    """(key, value) of every override typed on the eval command line."""
    from hydra.core.hydra_config import HydraConfig

    return [(key, value) for key, _, value in (o.lstrip("+~").partition("=") for o in HydraConfig.get().overrides.task)]


def user_settings(cfg: DictConfig) -> UserSettings:
    """The model settings the command line states explicitly (a group's other defaults are not
    statements about the checkpoint); used only for a checkpoint without metadata."""
    user = UserSettings()
    for key, _ in command_line_overrides():
        root, _, rest = key.partition(".")
        if root == "resampler" and rest and "." not in rest:
            user.resampler[rest] = OmegaConf.select(cfg, key)
        elif key.startswith("model.lora.") and key.count(".") == 2:
            user.lora[key.rsplit(".", 1)[1]] = OmegaConf.select(cfg, key)
        elif root == "prompt" and rest:
            user.prompt[rest] = OmegaConf.select(cfg, key)
        elif not rest and OmegaConf.is_dict(cfg.get(key)):  # a chosen group: backbone=..., view=...
            user.groups[key] = group_container(cfg, key)
    return user


def group_container(cfg: DictConfig, key: str) -> dict:
    """A chosen group's tree, resolved where it can be: a view chosen without `backbone=` (a
    guide-format checkpoint names its backbone) keeps ${backbone.image_size} for the rebuild to fill."""
    from omegaconf.errors import InterpolationResolutionError

    try:
        return OmegaConf.to_container(cfg[key], resolve=True)
    except InterpolationResolutionError:
        return OmegaConf.to_container(cfg[key], resolve=False)


def report_ignored_settings(cfg: DictConfig, meta: dict) -> list[str]:
    """Model settings on the eval command line that disagree with the checkpoint: reported, ignored."""
    saved = {
        "model": meta["model"],
        "prompt": meta["prompt"],
        "backbone": {
            "vision_encoder": meta["model"]["vision_encoder"],
            "language_model": meta["model"]["language_model"],
            "tokenizer": meta["tokenizer"],
        },
    }
    used = set(meta.get(RECONSTRUCTED, {}).get("command_line", {}))
    # A model part taken from the command line: the group that chose it was used, not ignored.
    used |= {"backbone" if part in BACKBONE_PARTS else GROUP_OF_PART.get(part, part) for part in used}
    notes = []
    for key, value in command_line_overrides():
        root = key.split(".")[0]
        if root not in MODEL_PATHS or key in used:
            continue
        if key == "resampler":
            found, given = meta["resampler_type"], value
        elif key == "backbone" and OmegaConf.is_dict(cfg.get("backbone")):
            # The same two models under any option name are the checkpoint's backbone.
            found = " + ".join(meta["model"][k]["name_or_path"] for k in BACKBONE_PARTS)
            given = " + ".join(str(OmegaConf.select(cfg, f"backbone.{k}.name_or_path")) for k in BACKBONE_PARTS)
            if found != given:
                notes.append(f"ignored backbone={value} ({given}): the checkpoint's backbone is {found}")
            continue
        elif "." not in key:
            notes.append(f"ignored {key}={value}: the model's settings come from the checkpoint")
            continue
        else:
            path = MODEL_PATHS[root] + key[len(root) :]
            # Typed values on both sides: `false` on the command line is the checkpoint's False.
            found, given = (
                OmegaConf.select(OmegaConf.create(saved), path, default="<absent>"),
                OmegaConf.select(cfg, key),
            )
        if found != given:
            notes.append(f"ignored {key}={value}: the checkpoint says {key}={found}")
    for note in notes:
        print(note)
    return notes


@dataclasses.dataclass
class ImageDependence:
    """Each item's answer loss with its own panorama and with the next item's."""

    own: list[float]
    rotated: list[float]

    @property
    def gaps(self) -> list[float]:
        return [r - o for o, r in zip(self.own, self.rotated)]

    def summary(self) -> dict:
        own, rotated = sum(self.own) / len(self.own), sum(self.rotated) / len(self.rotated)
        return {
            "answer_loss": round(own, 4),
            "answer_loss_images_rotated": round(rotated, 4),
            "gap": round(rotated - own, 4),
        }


@torch.no_grad()
def image_dependence(model, tokenizer, prompt, items: list[dict], data_cfg, batch_size: int) -> ImageDependence | None:
    """Answer loss with each item's own panorama, and with the panoramas rotated by one item
    (item i gets item i+1's); None with fewer than two items.

    A model that reads the image does much worse on the rotated pairs; a gap near zero means
    the captions come from the language prior alone, whatever the caption metrics say. Each item
    weighs the same: the losses are means over items of each item's mean over its answer tokens.
    """
    from vlm_resampler.data.collate import CaptionCollator
    from vlm_resampler.training.losses import answer_losses

    if len(items) < 2:
        return None
    collate = CaptionCollator(tokenizer, prompt, int(data_cfg["max_answer_tokens"]))
    dataset = EvalItems(items, int(data_cfg["erp_width"]), int(data_cfg["erp_height"]))
    examples = [dataset[i] | {"answer": item["references"][0]} for i, item in enumerate(items)]
    shuffled = [ex | {"panorama": examples[(i + 1) % len(examples)]["panorama"]} for i, ex in enumerate(examples)]
    losses = ImageDependence(own=[], rotated=[])
    for start in range(0, len(examples), batch_size):
        for into, rows in ((losses.own, examples), (losses.rotated, shuffled)):
            batch = batch_to(collate(rows[start : start + batch_size]), model.device)
            into.extend(answer_losses(model, batch).tolist())
    return losses


def intervals_of(items: list[dict], per_item: dict[str, list[float]], dependence, qa=None) -> dict:
    """metrics.json's `intervals` (evaluation/intervals.py): CIDEr and, where measured, the
    image-shuffle gap and answer loss, and QA exact match overall and per kind; one set of
    resamples of the evaluated panoramas for all of them."""
    images = [str(item["image"]) for item in items]
    bootstrap = PanoramaBootstrap(images)
    bounds = {"CIDEr": bootstrap.interval(per_item["CIDEr"], images)}
    if dependence is not None:
        bounds["image_gap"] = bootstrap.interval(dependence.gaps, images)
        bounds["answer_loss"] = bootstrap.interval(dependence.own, images)
    if qa is not None:
        bounds |= qa_intervals(bootstrap, *qa)
    return bootstrap.record(bounds)


def constant_caption(data_cfg) -> str:
    """The most frequent training reference (ties: alphabetical): the best a blind guess can do."""
    counts = collections.Counter(ref for item in prepare_split(data_cfg, "train") for ref in item["references"])
    best = max(counts.values())
    return sorted(ref for ref, n in counts.items() if n == best)[0]


def write_predictions(path: Path, items: list[dict], predictions: list[str], root: Path | None = None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "query", "prediction", "references"])
    for item, prediction in zip(items, predictions):
        writer.writerow([str(item["image"]), item["query"], prediction, json.dumps(item["references"])])
    write_text(path, buffer.getvalue())


def eval_items(cfg: DictConfig, stage_dir: Path, meta: dict):
    """(the dataset config, the split's items, the rows skipped as bad): the eval command line's
    `data` if given, else the checkpoint's own."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else meta["data"]
    if data_cfg is None:
        raise ValueError(
            f"{stage_dir}: no dataset is recorded (no {layout.METADATA}, no {layout.RESOLVED_CONFIG}); choose data=<option>"
        )
    data_cfg = OmegaConf.create(data_cfg)
    items, skipped_rows = load_split(data_cfg, cfg.split)
    if cfg.max_items:
        items = items[: int(cfg.max_items)]
    return data_cfg, items, skipped_rows


def baselines(loaded, meta: dict, items: list[dict], data_cfg, batch_size: int, generation, scorer) -> dict:
    """The untrained model (same seed, same architecture) and the constant-caption guess, scored."""
    references = [item["references"] for item in items]
    untrained = build_model(meta["model"], seed=int(meta["seed"])).eval().to(loaded.model.device)
    blind, _ = predict_items(
        untrained, loaded.tokenizer, loaded.prompt, items, data_cfg, batch_size, generation, "untrained"
    )
    caption = constant_caption(data_cfg)
    return {
        "untrained": scorer.score(blind, references),
        "constant_caption": scorer.score([caption] * len(items), references) | {"caption": caption},
    }


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    stage_dir = resolve_checkpoint_dir(Path(cfg.checkpoint_dir))
    if stage_dir != Path(cfg.checkpoint_dir):
        print(f"{cfg.checkpoint_dir} is a run directory: evaluating its last completed stage, {stage_dir.name}")
    started = time.perf_counter()
    from vlm_resampler.training.distributed import set_threads

    set_threads(cfg.num_threads)
    device_setting, precision = compute_settings(cfg)
    device = eval_device(device_setting)  # a device or precision this machine lacks fails before loading
    check_eval_precision(precision, device)
    require_java()  # a machine without Java fails before the model loads
    loaded = load_stage(stage_dir, verify=bool(cfg.verify), user=user_settings(cfg))
    print(f"eval on {describe(device)} in {precision}" + (" (autocast)" if precision != "fp32" else ""))
    try:
        loaded.model.to(device)
        # METEOR's JVM spends seconds (and ~7 s of CPU) loading its tables: started once the checkpoint
        # has loaded (a damaged one is refused without it), it does so while the model generates.
        with CaptionScorer(with_meteor=scores_meteor(cfg)) as scorer, autocast(device, precision):
            return evaluate_loaded(cfg, stage_dir, loaded, scorer, started, precision)
    except torch.OutOfMemoryError as err:
        raise OutOfGpuMemory(
            f"the eval ran out of memory on {describe(device)} ({first_line(err)}): lower batch_size (it is "
            f"{cfg.batch_size}), or evaluate in precision=bf16, or on device=cpu"
        ) from err


def evaluate_loaded(
    cfg: DictConfig, stage_dir: Path, loaded: LoadedStage, scorer: CaptionScorer, started: float, precision: str
) -> dict:
    meta = loaded.metadata
    source = loaded.described_by + (" (see the log above)" if RECONSTRUCTED in meta else "")
    print(
        f"model rebuilt from {source} (resampler={meta['resampler_type']}, "
        f"{json.dumps({k: v for k, v in meta['resampler'].items() if not k.startswith('_')})})"
    )
    ignored = report_ignored_settings(cfg, meta)

    data_cfg, items, skipped_rows = eval_items(cfg, stage_dir, meta)
    references = [item["references"] for item in items]
    out_dir = stage_dir / "eval" / f"{data_cfg.name}-{cfg.split}"

    generation = GenerationSettings.from_eval_config(cfg)
    predictions, throughput = predict_items(
        loaded.model, loaded.tokenizer, loaded.prompt, items, data_cfg, int(cfg.batch_size), generation, "model"
    )
    results = {
        "checkpoint_dir": str(stage_dir),
        "stage": meta["stage"],
        "dataset": data_cfg.name,
        "split": cfg.split,
        "n_items": len(items),
    }
    scored = scorer.score_items(predictions, references)
    results["model"] = scored.corpus
    results["unavailable"] = dict(scorer.unavailable)
    if cfg.baselines:
        results["baselines"] = baselines(loaded, meta, items, data_cfg, int(cfg.batch_size), generation, scorer)
    if data_cfg.name == "synthpano":
        results["subsets"] = seam_subsets(items, predictions, data_cfg, cfg.split, scorer)
    answered = None
    if data_cfg.name == "synthpano" and cfg.qa:
        qa = qa_items_for(items, data_cfg, cfg.split)
        # Every answer is a few words ("a red circle."): no need to let a wrong one run on for long.
        short = dataclasses.replace(generation, max_new_tokens=min(generation.max_new_tokens, QA_MAX_NEW_TOKENS))
        answers, _ = predict_items(
            loaded.model, loaded.tokenizer, loaded.prompt, qa, data_cfg, int(cfg.batch_size), short, "qa"
        )
        answered = (qa, answer_hits(qa, answers))
        results["qa"] = exact_match(*answered)
        write_predictions(out_dir / "qa_predictions.csv", qa, answers)
    dependence = image_dependence(loaded.model, loaded.tokenizer, loaded.prompt, items, data_cfg, int(cfg.batch_size))
    results["image_dependence"] = dependence.summary() if dependence else {}
    results["intervals"] = intervals_of(items, scored.per_item, dependence, answered)
    results["generation"] = throughput | {"precision": precision}
    if skipped_rows:
        results["skipped_rows"] = {"count": len(skipped_rows), "first": skipped_rows[:5]}
    results["ignored_settings"] = ignored
    if RECONSTRUCTED in meta:
        results["rebuilt_without_metadata"] = meta[RECONSTRUCTED]  # where each model setting came from
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_predictions(out_dir / "predictions.csv", items, predictions)
    write_text(out_dir / ITEM_SCORES, item_scores_csv(items, scored.per_item["CIDEr"], dependence, answered))
    write_json(out_dir / "metrics.json", results)
    written = "predictions.csv, " + ("qa_predictions.csv, " if "qa" in results else "") + f"{ITEM_SCORES}, metrics.json"
    report = ReportSettings.from_eval_config(cfg)
    if report.enabled:
        write_report(
            out_dir / "report.html", results, loaded.model, items, predictions, scored.per_item, data_cfg, report
        )
        written += ", report.html"
    print(summary_table(results))
    print(f"eval written to {out_dir} ({written})")
    return results


def write_report(
    path: Path,
    results: dict,
    model,
    items: list[dict],
    predictions: list[str],
    per_item: dict[str, list[float]],
    data_cfg,
    settings: ReportSettings,
) -> None:
    dataset = EvalItems(items, int(data_cfg["erp_width"]), int(data_cfg["erp_height"]))
    cards = []
    for index, (item, prediction) in enumerate(zip(items, predictions)):
        panorama, views = example_images(
            model.views, dataset[index]["panorama"], settings.panorama_width, settings.view_size, settings.jpeg_quality
        )
        cards.append(
            Card(
                index=index,
                image=Path(item["image"]).name,
                query=item["query"],
                prediction=prediction,
                references=list(item["references"]),
                scores={m: v[index] for m, v in per_item.items()},
                panorama=panorama,
                views=views,
            )
        )
    write_text(path, render_report(results, cards))
