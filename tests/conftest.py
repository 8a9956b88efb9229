"""Shared test setup. HF_HUB_OFFLINE must be set before transformers is imported anywhere."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One cache for the suite (tiny backbones, tokenizer, SynthPano): built once, reused by the
# subprocess tests too. Builds are atomic and validated, so reuse across runs is safe.
os.environ.setdefault("VLM_RESAMPLER_CACHE", str(REPO_ROOT / ".cache" / "vlm_resampler-tests"))
# Under pytest-xdist (`make test` runs one worker per core) the cores are shared out: two torch
# threads per process on two busy cores ran a tiny step 30x slower than one. Subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

import pytest  # noqa: E402

# A real local SLURM for the tests marked `slurm` (tests/slurm_cluster.py): the session fixture
# `slurm`, which every such test gets; skipped without a SLURM, failed when one is required (CI).
from slurm_cluster import group_slurm_tests, slurm  # noqa: E402,F401


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(items) -> None:
    group_slurm_tests(items)
    group_module_fixture_users(items)


def group_module_fixture_users(items) -> None:
    """Under pytest-xdist (`--dist loadgroup`) the tests of a module that share a module-scoped
    fixture run on one worker, so the fixture (a reference training run, a sweep, METEOR's JVM) is
    built once instead of once per worker that happens to get one of them."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        fixtures = getattr(item, "_fixtureinfo", None)
        definitions = fixtures.name2fixturedefs.values() if fixtures is not None else ()
        if any(defs and defs[-1].scope == "module" for defs in definitions):
            item.add_marker(pytest.mark.xdist_group(f"module fixtures of {item.module.__name__}"))


# With VLM_RESAMPLER_ONLY_EXPECTED_SKIPS=1 (CI) a skip for any other reason fails the run: a missing
# browser, SmolLM2 package or SLURM must not turn CI green by skipping what needs it. A test skipped
# for want of CUDA must be marked `cuda`, or `.ci/gpu-check` (pytest -m cuda) would not run it either.
EXPECTED_SKIP_REASONS = ("needs a CUDA device",)
_unexpected_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason not in EXPECTED_SKIP_REASONS:
            _unexpected_skips.append(f"{report.nodeid}: {reason}")
        elif "cuda" not in report.keywords:
            _unexpected_skips.append(f"{report.nodeid}: {reason}, but not marked `cuda` (.ci/gpu-check runs -m cuda)")


def _skips_fail() -> bool:
    return bool(_unexpected_skips) and os.environ.get("VLM_RESAMPLER_ONLY_EXPECTED_SKIPS") == "1"


# A group pytest-xdist dropped says so nowhere: the run passes, each module fixture is built once per
# worker instead of once, and `make test` is slower (pytest 9.2 with pytest-xdist 3.8: 4:42 to 5:17
# against 4:30 grouped, 7 Dec; pytest-dev/pytest-xdist#1386, hence setup.cfg's pin). Each worker
# reports what it saw.
_ungrouped: list[str] = []


def pytest_collection_finish(session):
    config = session.config
    if hasattr(config, "workeroutput") and getattr(config.option, "loadgroup", False):
        # pytest-xdist 3.x routes a group by the "@<group>" it appends to the node id.
        config.workeroutput["ungrouped"] = [
            item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
        ]


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown when it is not installed
def pytest_testnodedown(node, error):
    _ungrouped.extend(getattr(node, "workeroutput", {}).get("ungrouped", []))


def pytest_sessionfinish(session, exitstatus):
    if _skips_fail() or _ungrouped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _skips_fail():
        terminalreporter.write_line(
            f"error: {len(_unexpected_skips)} unexpected skip(s); only these reasons may skip here: "
            f"{', '.join(EXPECTED_SKIP_REASONS)}",
            red=True,
        )
        for line in _unexpected_skips:
            terminalreporter.write_line(f"  {line}", red=True)
    if _ungrouped:
        terminalreporter.write_line(
            f"error: pytest-xdist ran {len(set(_ungrouped))} tests of an xdist_group without their group "
            f"(first: {_ungrouped[0]}); this pytest and pytest-xdist do not work together, see setup.cfg",
            red=True,
        )


@pytest.fixture(autouse=True)
def slow_tests_get_the_offline_default_backbones(request):
    """The fast tier never builds the two pretrained backbones: checks and inspect read their
    declared architectures (local_backbones.DECLARED_ARCHITECTURES), and its tests that train
    backbone=tiny_reader build few-step versions into a private cache. Slow tests train and
    evaluate the real default, and a subprocess test must not spend its timeout building it."""
    if request.node.get_closest_marker("slow"):
        request.getfixturevalue("offline_default_backbones")


@pytest.fixture(scope="session")
def offline_default_backbones():
    """The default backbone's pretrained tiny Qwen3 and tower (~3 + ~2 min to build on 2 cores),
    built once into the suite's cache."""
    from vlm_resampler.models.local_backbones import ensure_local_backbone

    # One at a time, in the same order on every worker: each build trains on 2 threads of its own
    # (models/pinned_build.py), so two at once would oversubscribe 2 cores; a worker that reaches a
    # build another is making sleeps on the cache's build lock until it is done.
    for name in ["vlm-resampler/tiny-qwen3-reader", "vlm-resampler/tiny-siglip-pretrained"]:
        ensure_local_backbone(name)


@pytest.fixture(scope="session")
def smoke_config():
    """The composed train config with debug=smoke, as launch/train.py would see it."""
    from vlm_resampler.config.preflight import compose

    def make(*overrides: str):
        return compose("train", ["debug=smoke", *overrides])

    return make


_zygote = None


def run_cli(script: str, *args: str, timeout: float = 300.0, cwd: Path = REPO_ROOT):
    """Run a launch/ script as its own process, as a user would: a fork of this worker's warm
    interpreter (tests/cli_zygote.py), or a fresh one when the environment changes what imports
    read. Tests about import state run their own subprocess."""
    import subprocess
    import sys
    import tempfile

    argv = [str(REPO_ROOT / "launch" / script), *args]
    env = os.environ.copy()
    zygote = worker_zygote()
    if zygote.can_run(env):
        with tempfile.TemporaryDirectory(prefix="cli-") as out:
            return zygote.run(argv, cwd=Path(cwd), env=env, timeout=timeout, out_dir=Path(out))
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def training_batch(cfg: dict, n: int = 3) -> dict:
    """The first `n` training examples of a resolved config, collated as the Trainer gets them."""
    from omegaconf import OmegaConf

    from vlm_resampler.data.collate import CaptionCollator
    from vlm_resampler.data.datasets import CaptionExamples, prepare_split
    from vlm_resampler.data.prompts import PromptFormat
    from vlm_resampler.models.backbones import load_tokenizer

    data = OmegaConf.create(cfg["data"])
    examples = CaptionExamples(prepare_split(data, "train"), data.erp_width, data.erp_height)
    tokenizer = load_tokenizer(cfg["backbone"]["tokenizer"]["name_or_path"])
    collate = CaptionCollator(tokenizer, PromptFormat(**cfg["prompt"]), data.max_answer_tokens)
    return collate([examples[i] for i in range(n)])


def answer_logits(model, batch: dict):
    """The model's answer-token logits for a training batch (what identical models agree on exactly)."""
    import torch

    with torch.no_grad():
        visual = model.visual_embeddings(batch["panoramas"])
        return model.answer_logits(visual, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]


def worker_zygote():
    """This test worker's CLI zygote (tests/cli_zygote.py), started on first use."""
    global _zygote
    if _zygote is None:
        from cli_zygote import Zygote

        _zygote = Zygote()
    return _zygote


def pytest_unconfigure(config):
    if _zygote is not None:
        _zygote.close()


def inspect_in_process(capsys, *args: str) -> tuple[int, str]:
    """launch/inspect.py's main in this process: (exit code, stdout). For tests of what inspect
    reports; its command line itself (exit 2, no traceback, its own process) is run_cli's."""
    from vlm_resampler.inspection.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


# Small enough to train in seconds; non-default heads and frequency show where values come from.
FINETUNE_RUN_TYPES = {
    "mlp": ["resampler=mlp", "resampler.hidden_dim=96"],
    "qformer": [
        "resampler=qformer",
        "resampler.hidden_dim=64",
        "resampler.num_attention_heads=4",
        "resampler.num_hidden_layers=3",
        "resampler.cross_attention_frequency=2",
        "resampler.num_query_tokens=8",
        "resampler.intermediate_size=128",
    ],
}


def train_smoke_finetune(root: Path, name: str, overrides: list[str]) -> Path:
    """One CLI smoke run, finetune stage only (resampler, projector and LoRA); its run dir."""
    run_dir = root / name
    done = run_cli(
        "train.py",
        "debug=smoke",
        *overrides,
        "stages=[finetune]",
        f"experiment.name={name}",
        f"hydra.run.dir={run_dir}",
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def cli_smoke_run(tmp_path_factory):
    """One `train.py debug=smoke` run of all three stages from the command line: (run dir, its
    stdout). Shared by the layout, eval and inspect tests, which only read it (a test that
    changes files works on a copy)."""
    root = tmp_path_factory.mktemp("smoke")
    run_dir = root / "runs" / "smoke"
    done = run_cli("train.py", "debug=smoke", "experiment.name=smoke", f"hydra.run.dir={run_dir}", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done.stdout


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The directory `build(directory)` fills, built once per test session however many xdist
    workers ask (the first builds under a lock, the others wait and reuse it). Only for what the
    tests never change: a worker's writes would show in another's tests."""
    import shutil

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this session's directory, above every worker's own (popen-gw0, ...)
    target = base / f"built-once-{name}"
    with FileLock(f"{target}.lock"):
        if not (target / ".built").exists():
            shutil.rmtree(target, ignore_errors=True)  # what a failed build left
            target.mkdir()
            build(target)
            (target / ".built").touch()
    return target


@pytest.fixture(scope="session")
def finetune_runs(tmp_path_factory):
    """One run per FINETUNE_RUN_TYPES entry, shared by the tests that rebuild checkpoints: they
    change only copies of these runs (two CLI trainings of ~20 s: built once for all workers)."""

    def build(root: Path) -> None:
        for name, overrides in FINETUNE_RUN_TYPES.items():
            train_smoke_finetune(root, name, overrides)

    root = built_once(tmp_path_factory, "finetune-runs", build)
    return {name: root / name for name in FINETUNE_RUN_TYPES}


@pytest.fixture(scope="module")
def saver(smoke_config):
    """For the kill-during-save and full-disk tests: a smoke model with the finetune stage's LoRA (so an adapter is saved too), the metadata
    fields a stage save records, and a second model of the same shape to load into."""
    from omegaconf import OmegaConf

    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.run import ALWAYS_SAVED, resolved_container
    from vlm_resampler.training.stages import attach_stage_lora

    cfg = resolved_container(smoke_config())
    models = []
    for _ in range(2):
        model = build_model(cfg["model"], seed=int(cfg["seed"]))
        lora = attach_stage_lora(model, OmegaConf.create(cfg["stage"]["finetune"]))
        models.append(model)
    assert models[0].lora_config, "the kill test must cover the adapter file too"
    return models[0], models[1], list(ALWAYS_SAVED), finetune_save_fields(cfg, lora)


def finetune_save_fields(cfg: dict, lora: dict) -> dict:
    """The metadata fields a finetune stage save records (save_stage_checkpoint's keyword
    arguments but the train summary), for a resolved smoke config and its LoRA record."""
    from vlm_resampler.training.run import backbone_records

    return dict(
        stage="finetune",
        seed=int(cfg["seed"]),
        model_tree=dict(cfg["model"]) | {"lora": lora},
        tokenizer=dict(cfg["backbone"]["tokenizer"]),
        prompt=dict(cfg["prompt"]),
        data=dict(cfg["data"]),
        backbones=backbone_records(cfg),
        init_from=None,
        trainable=[],
    )


def write_eval(directory, ciders: list[float], units: list[str], split: str = "test", correct=None):
    """An eval directory as launch/eval.py leaves it, as far as the comparison reads it."""
    import json

    from vlm_resampler.evaluation.compare import item_scores_csv

    directory.mkdir(parents=True)
    items = [{"image": u, "query": "describe the panorama."} for u in units]
    answered = None
    if correct is not None:
        answered = ([{"image": u, "query": "Which colour is the circle in front?"} for u in units], correct)
    (directory / "item_scores.csv").write_text(item_scores_csv(items, ciders, None, answered))
    (directory / "metrics.json").write_text(json.dumps({"dataset": "synthpano", "split": split}))
    return directory


def best_tied_and_beaten() -> tuple[list[str], list[list[float]]]:
    """40 panoramas whose difficulty spans CIDEr 0 to 4, and three evals' per-panorama CIDEr: the
    best; one 0.05 lower on average but +-0.8 on each panorama (no 95% paired interval tells it from
    the best); one 0.5 lower on every panorama (told apart, though each eval's own interval is
    about 1 wide)."""
    units = [f"pano_{p:02d}.png" for p in range(40)]
    difficulty = [float(p % 5) for p in range(40)]
    best = [d + 0.5 for d in difficulty]
    tied = [d + 0.5 + (0.75 if p % 2 else -0.85) for p, d in enumerate(difficulty)]
    return units, [best, tied, difficulty]
