"""The bad-config corpus (tests/data/bad_configs.yaml) and the folders its entries point to."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CORPUS = Path(__file__).parent / "data" / "bad_configs.yaml"


def load_corpus() -> list[dict]:
    entries = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    for entry in entries:
        assert set(entry) in ({"train", "expect"}, {"eval", "expect"}), entry
    return entries


def entry_id(entry: dict) -> str:
    script = "train" if "train" in entry else "eval"
    return f"{script}:{' '.join(entry[script]) or '(none)'}"


def write_stage(stage_dir: Path, resampler: str) -> Path:
    """A stage dir whose checkpoint_metadata.json describes the default model with `resampler`
    (no weights: validation reads the metadata only)."""
    from omegaconf import OmegaConf

    from vlm_resampler.config.preflight import compose
    from vlm_resampler.runs.layout import METADATA
    from vlm_resampler.runs.metadata import FORMAT_VERSION

    cfg = compose("train", [f"resampler={resampler}"])
    backbones = {
        k: {"name_or_path": str(cfg.model[k].name_or_path), "revision": None}
        for k in ("vision_encoder", "language_model")
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "backbones": backbones,
    }
    stage_dir.mkdir(parents=True)
    (stage_dir / METADATA).write_text(json.dumps(meta), encoding="utf-8")
    return stage_dir


def corpus_folders(root: Path) -> dict[str, str]:
    from vlm_resampler.runs.layout import METADATA

    broken = root / "broken_run" / "resampler"
    broken.mkdir(parents=True)
    (broken / METADATA).write_text('{"format_version": 1, "model": {', encoding="utf-8")
    empty = root / "empty"
    empty.mkdir()
    quic360 = root / "quic360"
    quic360.mkdir()
    (quic360 / "train.csv").write_text("url,query,annotation\n", encoding="utf-8")
    return {
        "tmp": str(root),
        "mlp_stage": str(write_stage(root / "mlp_run" / "resampler", "mlp")),
        "bimamba_stage": str(write_stage(root / "bimamba_run" / "resampler", "bimamba")),
        "broken_stage": str(broken),
        "empty_dir": str(empty),
        "quic360": str(quic360),
    }


def entry_argv(entry: dict, folders: dict[str, str]) -> tuple[str, list[str]]:
    script = "train" if "train" in entry else "eval"
    argv = [arg.format(**folders) for arg in entry[script]]
    if script == "train":
        argv.append(f"hydra.run.dir={folders['tmp']}/run")
    return script, argv


def refusal(script: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run the script's own pre-start checks in-process; (exit code, stderr). 0 means accepted."""
    from vlm_resampler.cli import check_eval_argv, check_train_argv

    check = check_train_argv if script == "train" else check_eval_argv
    capsys.readouterr()
    try:
        check(argv, configure_hub=False)
    except SystemExit as stop:
        err = capsys.readouterr().err
        # The interpreter's own rule: SystemExit(None) exits 0, a message exits 1.
        assert isinstance(stop.code, int) or stop.code is None, f"SystemExit({stop.code!r}) exits 1, not 2"
        return stop.code or 0, err
    return 0, capsys.readouterr().err
