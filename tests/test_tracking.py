"""Experiment tracking (conf/logger/, training/tracking.py): TensorBoard event files, a CSV and MLflow
runs (one parent per job, one child per stage) hold what the Trainer logged; a resumed run re-attaches
to its MLflow runs; a store that cannot be reached is one warning and the run still finishes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from vlm_resampler.runs import layout
from vlm_resampler.training import resume
from vlm_resampler.training.tracking import CsvTable, JobTracking

from bad_config_corpus import refusal
from conftest import REPO_ROOT, run_cli

ALL_TRACKERS = ["debug=smoke", "logger=mlflow", "logger.report_to=[mlflow,tensorboard,csv]"]
# Two stages; the first long enough to be stopped in its middle (a stop signal saves a resumable
# checkpoint at the next step, the only one: no periodic saves).
TWO_STAGES = ["stages=[resampler,finetune]", "stage.resampler.max_steps=6", "stage.resampler.save_steps=100"]
STEPS = {"resampler": 6, "finetune": 2}  # finetune: debug=smoke's max_steps, logging every step


def start_cli(*args: str, cwd) -> subprocess.Popen:
    command = [sys.executable, str(REPO_ROOT / "launch" / "train.py"), *args]
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def logged_step(stage_dir, step: int) -> bool:
    path = stage_dir / layout.TRAIN_LOG
    return path.is_file() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines() if line)


def client_of(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def all_runs(client) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def parents_and_children(client) -> tuple[list, dict]:
    runs = all_runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {}
    for r in runs:
        if "mlflow.parentRunId" in r.data.tags:
            children.setdefault(r.info.run_name, []).append(r)
    return parents, children


def steps_of(history) -> list[int]:
    return sorted(m.step for m in history)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """logger=mlflow with TensorBoard and CSV too: a run stopped by SIGTERM in the middle of its first
    stage (both MLflow runs then end KILLED), then the same command again, which finishes it."""
    root = tmp_path_factory.mktemp("tracked")
    run_dir = root / "run"
    args = [*ALL_TRACKERS, *TWO_STAGES, "experiment.name=tracked", f"hydra.run.dir={run_dir}"]
    proc = start_cli(*args, cwd=root)
    deadline = time.monotonic() + 240
    while not logged_step(run_dir / "resampler", 1):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no step logged"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    checkpoint = resume.latest_checkpoint(run_dir / "resampler")
    assert checkpoint is not None and resume.checkpoint_step(checkpoint) < STEPS["resampler"]
    first = json.loads((run_dir / layout.MLFLOW_RUNS).read_text())
    client = client_of(first["tracking_uri"])
    stopped = {
        "parent": client.get_run(first["parent"]).info.status,
        "resampler": client.get_run(first["stages"]["resampler"]).info.status,
    }
    done = run_cli("train.py", *args, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return SimpleNamespace(dir=run_dir, first=first, stopped=stopped, output=done.stdout + done.stderr + err)


@pytest.mark.slow
def test_mlflow_one_parent_per_job_one_child_per_stage_and_a_resumed_run_reattaches(resumed_run):
    record = json.loads((resumed_run.dir / layout.MLFLOW_RUNS).read_text())
    assert record == resumed_run.first | {"stages": record["stages"]}  # same store, same parent
    assert record["stages"]["resampler"] == resumed_run.first["stages"]["resampler"]
    assert record["tracking_uri"] == f"sqlite:///{resumed_run.dir / layout.MLFLOW_DB}"
    assert resumed_run.stopped == {"parent": "KILLED", "resampler": "KILLED"}
    assert "tracking is off" not in resumed_run.output

    client = client_of(record["tracking_uri"])
    parents, children = parents_and_children(client)
    assert [p.info.run_id for p in parents] == [record["parent"]]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert client.get_experiment(parent.info.experiment_id).name == "tracked"
    params = parent.data.params
    assert params["resampler._target_"] == "vlm_resampler.resamplers.mlp.MLPResampler"
    assert params["stage.resampler.max_steps"] == "6" and params["stage.finetune.lr"] == "0.001"
    assert params["view._target_"] == "vlm_resampler.panorama.views.HorizonViews"
    assert params["choice.resampler"] == "mlp" and params["choice.logger"] == "mlflow"
    assert "model.resampler._target_" not in params  # the model's copy of a group is not repeated
    assert all(len(v) <= 250 for v in params.values())
    from vlm_resampler.runs.run_meta import git_state

    assert parent.data.tags["git_sha"] == git_state()["sha"] and parent.data.tags["experiment"] == "tracked"

    assert sorted(children) == ["finetune", "resampler"]
    for name, runs in children.items():
        assert len(runs) == 1, f"stage {name} has {len(runs)} runs: a resumed stage must re-attach to its own"
        run = runs[0]
        assert run.data.tags["mlflow.parentRunId"] == record["parent"] and run.info.status == "FINISHED"
        assert run.info.run_id == record["stages"][name]
        assert steps_of(client.get_metric_history(run.info.run_id, "loss")) == list(range(1, STEPS[name] + 1))
        assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == STEPS[name]
        assert run.data.metrics["train_samples_per_second"] > 0
        counts = {k: int(v) for k, v in run.data.params.items() if k.startswith("n_params")}
        assert counts["n_params"] > counts["n_params.trainable"] > 0
        assert counts["n_params.trainable.resampler"] == counts["n_params.resampler"] > 0
    finetune = children["finetune"][0].data.params
    assert int(finetune["n_params.trainable.lora"]) > 0  # the finetune stage's LoRA, counted
    assert int(finetune["n_params.trainable"]) > int(children["resampler"][0].data.params["n_params.trainable"])


@pytest.mark.slow
def test_tensorboard_events_and_the_csv_hold_every_logged_step_once_after_a_resume(resumed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for stage, steps in STEPS.items():
        stage_dir = resumed_run.dir / stage
        journal = [json.loads(line) for line in (stage_dir / layout.TRAIN_LOG).read_text().splitlines()]
        losses = {r["step"]: r["loss"] for r in journal if "loss" in r}
        assert sorted(losses) == list(range(1, steps + 1))

        events = EventAccumulator(str(stage_dir / layout.TENSORBOARD_DIR))
        events.Reload()
        scalars = events.Scalars("train/loss")
        assert [e.step for e in scalars] == list(range(1, steps + 1))
        assert [e.value for e in scalars] == pytest.approx([losses[s] for s in range(1, steps + 1)], rel=1e-6)
        assert "train/learning_rate" in events.Tags()["scalars"]

        rows = (stage_dir / layout.METRICS_CSV).read_text().splitlines()
        header, rows = rows[0].split(","), [dict(zip(rows[0].split(","), r.split(","))) for r in rows[1:]]
        assert header[:3] == ["step", "loss", "grad_norm"] and "train_samples_per_second" in header
        with_loss = [r for r in rows if r["loss"]]
        assert [int(r["step"]) for r in with_loss] == list(range(1, steps + 1))
        assert [float(r["loss"]) for r in with_loss] == pytest.approx([losses[s] for s in range(1, steps + 1)])
    # the resumed stage: one event file per attempt, read as one
    assert len(list((resumed_run.dir / "resampler" / layout.TENSORBOARD_DIR).iterdir())) == 2


def test_a_sweep_job_tracks_into_the_sweep_store_under_the_sweep_name(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli(
        "train.py", "-m", "debug=smoke", "logger=mlflow", "stages=[finetune]", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and (p / layout.MLFLOW_RUNS).is_file()]
    record = json.loads((job / layout.MLFLOW_RUNS).read_text())
    assert record["tracking_uri"] == f"sqlite:///{sweep / layout.MLFLOW_DB}"
    client = client_of(record["tracking_uri"])
    (parent,), children = parents_and_children(client)
    assert client.get_experiment(parent.info.experiment_id).name == sweep.name
    assert parent.info.run_name == job.name
    assert parent.data.tags["sweep_dir"] == str(sweep) and parent.data.tags["job_num"] == "0"
    assert list(children) == ["finetune"]
    history = client.get_metric_history(children["finetune"][0].info.run_id, "loss")
    assert steps_of(history) == [1, 2]
    assert not (job / "finetune" / layout.TENSORBOARD_DIR).exists()  # logger=mlflow alone: no other tracker
    assert not (job / "finetune" / layout.METRICS_CSV).exists()


def test_an_unreachable_tracking_server_is_one_warning_and_the_run_finishes(tmp_path):
    import socket

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    done = run_cli(
        "train.py",
        "debug=smoke",
        "logger=mlflow",
        f"logger.tracking_uri=http://127.0.0.1:{port}",
        "stages=[finetune]",
        "experiment.name=offline",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    warnings = [line for line in output.splitlines() if "tracking is off" in line]
    assert len(warnings) == 1, output[-3000:]
    assert "mlflow tracking is off for this run" in warnings[0] and f"127.0.0.1:{port}" in warnings[0]
    assert "Traceback" not in output
    assert json.loads((run_dir / layout.STATUS).read_text())["status"] == layout.DONE
    assert not (run_dir / layout.MLFLOW_RUNS).exists()
    assert elapsed < 120, f"{elapsed:.0f} s: the unreachable server was retried"  # MLflow's own retries: minutes


# ---- in-process: no training -------------------------------------------------------------------
def fake_state(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_world_process_zero=True)


def test_an_unwritable_store_turns_mlflow_off_with_one_warning_and_the_other_trackers_stay(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cfg = {
        "experiment": {"name": "x"},
        "logger": {"report_to": ["mlflow", "csv"], "tracking_uri": f"sqlite:///{blocker}/mlflow.db"},
    }
    with caplog.at_level(logging.WARNING):
        tracking = JobTracking(cfg, tmp_path / "run")
        with tracking.stage("finetune", tmp_path / "run" / "finetune", None, torch.nn.Linear(2, 2), []) as callbacks:
            assert [type(c).__name__ for c in callbacks] == ["CsvLog"]
        tracking.end()
    assert tracking.mlflow is None and tracking.on == ["csv"]
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "mlflow tracking is off for this run" in record.getMessage() and "training goes on" in record.getMessage()


def test_logger_none_tracks_nothing(tmp_path):
    tracking = JobTracking({"logger": {"report_to": []}}, tmp_path)
    with tracking.stage("finetune", tmp_path / "finetune", None, torch.nn.Linear(2, 2), []) as callbacks:
        assert callbacks == []
    assert list(tmp_path.iterdir()) == []


def test_the_csv_gets_a_column_per_name_and_a_resumed_stage_keeps_the_rows_up_to_its_checkpoint(tmp_path):
    path = tmp_path / layout.METRICS_CSV
    table = CsvTable(path)
    for step in (1, 2, 3):
        table.on_log(None, fake_state(step), None, logs={"loss": 1.0 / step, "learning_rate": 0.1, "note": "text"})
    table.on_log(None, fake_state(3), None, logs={"train_runtime": 4.5, "train_samples_per_second": 12.0})
    lines = path.read_text().splitlines()
    assert lines[0] == "step,loss,learning_rate,train_runtime,train_samples_per_second"
    assert lines[1:] == ["1,1.0,0.1,,", "2,0.5,0.1,,", f"3,{1 / 3},0.1,,", "3,,,4.5,12.0"]

    resumed = CsvTable(path, resume_step=2)
    assert path.read_text().splitlines() == lines[:3]
    resumed.on_log(None, fake_state(3), None, logs={"loss": 0.25, "learning_rate": 0.05})
    assert path.read_text().splitlines()[3] == "3,0.25,0.05,,"
    CsvTable(path)  # a stage started anew (no checkpoint): a fresh table
    assert path.read_text().splitlines() == ["step"]


def test_a_resumed_stages_tensorboard_hides_what_the_interrupted_attempt_logged_after_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vlm_resampler.training.tracking import StageTensorBoard

    args = SimpleNamespace(to_json_string=lambda: "{}")
    for resume_step, steps, value in ((None, [1, 2, 3], 1.0), (1, [2, 3], 2.0)):  # killed after step 3, resumed at 1
        board = StageTensorBoard(tmp_path, resume_step)
        state = SimpleNamespace(is_world_process_zero=True, is_hyper_param_search=False)
        board.on_train_begin(args, state, None)
        for step in steps:
            board.on_log(args, fake_state(step), None, logs={"loss": value * step})
        board.on_train_end(args, state, None)
        time.sleep(1.1)  # event files are named by the second they were opened
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 4.0), (3, 6.0)]


def test_eval_numbers_go_to_the_jobs_parent_run(tmp_path):
    """eval_after's numbers, as <split>/<name> (optimized_metric's names), through sweeps/job.py."""
    from vlm_resampler.sweeps.job import track_eval
    from vlm_resampler.training.mlflow_runs import MlflowJob

    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'store' / layout.MLFLOW_DB}"
    cfg = {"experiment": {"name": "x"}, "resampler": {"prompt": "p" * 400}}
    job = MlflowJob.open(cfg, run_dir, uri, None)
    assert client_of(uri).get_run(job.parent).data.params["resampler.prompt"] == "p" * 247 + "..."
    metrics = {"split": "val", "model": {"CIDEr": 0.5, "BLEU-4": 0.125}, "image_dependence": {"gap": 0.25}}
    (run_dir / "finetune" / "eval" / "synthpano-val").mkdir(parents=True)
    (run_dir / "finetune" / "eval" / "synthpano-val" / "metrics.json").write_text(json.dumps(metrics))
    track_eval(run_dir, run_dir / "finetune")
    logged = client_of(uri).get_run(job.parent).data.metrics
    assert logged == {"val/CIDEr": 0.5, "val/BLEU-4": 0.125, "val/image_gap": 0.25}


BAD_LOGGER = [
    (["logger=wandb"], ["logger=wandb", "no such option", "csv, mlflow, none, tensorboard"]),
    (["logger=tensorbord"], ["Did you mean 'tensorboard'"]),
    (["logger=mlflow", "logger.tracking_uri=5"], ["logger.tracking_uri=5", "expected a non-empty string"]),
    (["logger.report_to=[tensorbord]"], ["unknown tracker 'tensorbord'", "Did you mean 'tensorboard'"]),
    (["logger=csv", "logger.tracking_uri=x"], ["logger.tracking_uri", "unknown key 'tracking_uri'"]),
]


@pytest.mark.parametrize("argv, expected", BAD_LOGGER, ids=[" ".join(a) for a, _ in BAD_LOGGER])
def test_a_bad_logger_setting_is_refused_naming_the_key(argv, expected, tmp_path, capsys):
    code, message = refusal("train", [*argv, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2, message
    for text in expected:
        assert text in message, f"{text!r} not in:\n{message}"
    assert "Traceback" not in message
