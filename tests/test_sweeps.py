"""Sweeps without SLURM: job directory names, the whole sweep checked before anything is submitted,
the launcher configs, and a hydra/launcher=basic sweep end to end (conf/ snapshot, sweep.json,
summarize, summarize --resume). The same sweeps on a real SLURM: test_sweeps_slurm.py."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from vlm_resampler.errors import ConfigError
from vlm_resampler.runs import layout
from vlm_resampler.sweeps import dirs

from conftest import REPO_ROOT, run_cli

# Small and quick: one stage, tiny resampler widths (bimamba's CPU scan is slow at default sizes).
SMALL = ["debug=smoke", "stages=[resampler]", "num_threads=1", "resampler.latent_dimension=32", "resampler.depth=1"]


def manifest(sweep: Path) -> dict:
    return json.loads((sweep / dirs.MANIFEST).read_text())


def status(job_dir: Path) -> dict:
    return json.loads((job_dir / layout.STATUS).read_text())


# ---------------------------------------------------------------------------------------------
# Job directory names.
# ---------------------------------------------------------------------------------------------


def test_job_dir_is_its_number_and_a_hash_of_its_overrides(tmp_path):
    job = ["resampler=mlp", "resampler.hidden_dim=16"]
    name = dirs.job_dir_name(3, job)
    assert re.fullmatch(r"3_[0-9a-f]{8}", name) and dirs.JOB_DIR.match(name)
    assert dirs.overrides_hash(job) == dirs.overrides_hash(list(reversed(job))), "order must not matter"
    assert dirs.overrides_hash(job) != dirs.overrides_hash(["resampler=mlp", "resampler.hidden_dim=32"])
    # A new job gets <num>_<hash>; a job submitted again finds its own directory by the hash,
    # whatever number it has now.
    assert dirs.sweep_job_dir(tmp_path, 7, job) == f"7_{dirs.overrides_hash(job)}"
    (tmp_path / name).mkdir()
    assert dirs.sweep_job_dir(tmp_path, 0, job) == name
    assert [p.name for p in dirs.job_dirs(tmp_path)] == [name]


def test_train_yaml_names_sweep_jobs_through_the_resolver(smoke_config):
    from vlm_resampler.config.preflight import compose

    cfg = compose("train", ["debug=smoke"], with_hydra=True)
    assert "sweep_job_dir" in cfg.hydra.sweep._get_node("subdir")._value()
    assert cfg.eval_after is False and list(cfg.eval_args) == []


# ---------------------------------------------------------------------------------------------
# The whole sweep is checked before anything is submitted.
# ---------------------------------------------------------------------------------------------


def test_bad_sweep_is_refused_before_submission_with_every_bad_job(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "resampler=mlp,bimamba",
        "resampler.expand=1.5,2",
        *SMALL,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "2 of 4 job(s) have an invalid config; nothing was started" in done.stderr
    for value in ("1.5", "2"):
        assert f"[resampler=mlp resampler.expand={value} " in done.stderr
    assert "`expand` is a parameter of resampler=bimamba" in done.stderr
    assert "experiment=glob(compare_*)" in done.stderr, "the way to sweep type-specific keys"
    assert not sweep.exists(), "nothing may be written (or submitted) for a refused sweep"


def test_a_job_whose_views_the_tower_cannot_cut_stops_the_sweep(tmp_path):
    """view.size=40 is a size (>= 8), but the tiny tower's 16-pixel patches do not tile it."""
    sweep = tmp_path / "sweep"
    done = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "view.size=40,48",
        *SMALL,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "1 of 2 job(s) have an invalid config" in done.stderr
    assert "[view.size=40 " in done.stderr
    assert "view.size=40: expected a multiple of the vision encoder's patch size 16" in done.stderr
    assert not sweep.exists()


def test_what_the_config_checks_miss_the_meta_device_build_of_each_job_refuses(monkeypatch):
    """The last net of a sweep's preflight: each job's model is built on the meta device. With the
    config check of the view size taken out, the model's own refusal stops the job."""
    from vlm_resampler.config import validate
    from vlm_resampler.config.preflight import compose
    from vlm_resampler.sweeps.check import validate_sweep_job

    monkeypatch.setitem(validate.CHECK_SETS, "backbones", (validate.check_backbones_available,))
    cfg = compose("train", [*SMALL, "view.size=40"])
    with pytest.raises(ConfigError) as refused:
        validate_sweep_job(cfg)
    assert "cannot be built" in str(refused.value)
    assert "view.size=40: expected a multiple of the vision encoder's patch size 16" in str(refused.value)


def test_type_specific_keys_are_swept_through_per_type_presets():
    """-m 'experiment=glob(compare_*)' resampler.hidden_dim=16,32: every job is valid, each type with its own keys."""
    from vlm_resampler.catalog import CONF_DIR
    from vlm_resampler.config.preflight import compose, sweep_jobs
    from vlm_resampler.sweeps.check import validate_sweep_job

    jobs, hydra_overrides = sweep_jobs(
        "train", ["experiment=glob(compare_*)", "resampler.hidden_dim=16,32", "hydra/launcher=slurm"], CONF_DIR
    )
    assert hydra_overrides == ["hydra/launcher=slurm"]
    assert [job[0] for job in jobs] == ["experiment=compare_bimamba"] * 2 + ["experiment=compare_mlp"] * 2
    for job in jobs:
        cfg = compose("train", [*job, "debug=smoke"])
        validate_sweep_job(cfg)
        assert cfg.resampler.hidden_dim in (16, 32)
        assert ("expand" in cfg.resampler) == (job[0] == "experiment=compare_bimamba")


SWEEPER_PARAMS_PRESET = """# @package _global_
hydra:
  sweeper:
    params:
      projector.depth: 0,2
"""


def test_jobs_a_preset_sweeps_through_hydra_sweeper_params_are_validated_like_the_command_lines(
    tmp_path, monkeypatch, capsys
):
    """One expansion (Hydra's BasicSweeper) for preflight and submission: a preset's
    hydra.sweeper.params become jobs, and a bad one stops the sweep before anything is written."""
    from vlm_resampler.catalog import CONF_DIR
    from vlm_resampler.cli import check_train_argv
    from vlm_resampler.config import preflight

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "experiment" / "depth_sweep.yaml").write_text(SWEEPER_PARAMS_PRESET)
    jobs, _ = preflight.sweep_jobs("train", ["experiment=depth_sweep", "resampler=mlp,perceiver"], conf)
    assert jobs == [
        ["projector.depth=0", "experiment=depth_sweep", "resampler=mlp"],
        ["projector.depth=0", "experiment=depth_sweep", "resampler=perceiver"],
        ["projector.depth=2", "experiment=depth_sweep", "resampler=mlp"],
        ["projector.depth=2", "experiment=depth_sweep", "resampler=perceiver"],
    ]
    monkeypatch.setattr(preflight, "CONF_DIR", conf)
    sweep = tmp_path / "sweep"
    argv = ["-m", "experiment=depth_sweep", "debug=smoke", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}"]
    with pytest.raises(SystemExit) as stopped:
        check_train_argv(argv, configure_hub=False)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "1 of 2 job(s) have an invalid config" in err
    assert "[projector.depth=0 experiment=depth_sweep debug=smoke] projector.depth=0: expected an int >= 1" in err
    assert not sweep.exists()


def test_preflight_knows_hydra_and_plugin_launchers():
    from vlm_resampler.config.preflight import config_groups

    assert {"basic", "submitit_local", "submitit_slurm", "local", "slurm"} <= set(config_groups()["hydra/launcher"])


# ---------------------------------------------------------------------------------------------
# Launcher configs.
# ---------------------------------------------------------------------------------------------


def compose_launcher(conf_dir: Path, launcher: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose("train", [f"hydra/launcher={launcher}", "debug=smoke", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_slurm_launcher_defaults_and_site_file(tmp_path):
    launcher = compose_launcher(REPO_ROOT / "conf", "slurm")
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.signal_delay_s == 120 and launcher.max_num_timeout >= 1
    assert launcher.tasks_per_node == launcher.gpus_per_node, "one task per GPU"
    assert launcher.partition is None and launcher.account is None
    # Cluster values from the git-ignored conf/local/slurm.yaml (here in a copy of conf/), the
    # command line over both.
    conf = tmp_path / "conf"
    shutil.copytree(REPO_ROOT / "conf", conf, ignore=shutil.ignore_patterns("local"))
    (conf / "local").mkdir()
    (conf / "local" / "slurm.yaml").write_text("partition: gpu_a100\naccount: vlm\nqos: high\n")
    launcher = compose_launcher(conf, "slurm", "hydra.launcher.account=other")
    assert (launcher.partition, launcher.account, launcher.qos) == ("gpu_a100", "other", "high")
    assert "conf/local/" in (REPO_ROOT / ".gitignore").read_text()


def test_local_launcher_is_submitit_local():
    launcher = compose_launcher(REPO_ROOT / "conf", "local")
    assert launcher._target_.endswith("LocalLauncher") and launcher.tasks_per_node == 1


def with_sbatch(tmp_path: Path, script: str) -> dict:
    """The environment with `script` as the `sbatch` on PATH: a stand-in for a cluster's. An
    `srun` that is never run stands beside it, for a machine without SLURM: submitit's executor
    refuses to start where it finds none."""
    import os

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text(script)
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\necho 'srun: not expected in this test' >&2\nexit 1\n")
    for name in ("sbatch", "srun"):
        (tmp_path / "bin" / name).chmod(0o755)
    return os.environ | {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}


REFUSING_SBATCH = """#!/bin/sh
echo "sbatch: error: invalid partition specified: nosuch" >&2
echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2
exit 1
"""


def test_a_job_array_sbatch_refuses_ends_in_its_words_and_the_request_not_a_traceback(tmp_path):
    """The first thing a new cluster says is often no (a partition, account or GPU type it lacks):
    the sweep ends with sbatch's message and what was asked for, exit 1. An sbatch on PATH that
    refuses as SLURM's does stands in for the cluster."""
    import subprocess
    import sys

    env = with_sbatch(tmp_path, REFUSING_SBATCH)
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "launch" / "train.py"), "-m", "hydra/launcher=slurm",
         "hydra.launcher.partition=nosuch", "hydra.launcher.account=vlm", "resampler=mlp,perceiver",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "error: SLURM refused the job array of 2 job(s); none of them was submitted." in done.stderr
    assert "invalid partition specified: nosuch; sbatch: error: Batch job submission failed" in done.stderr
    assert "asked for: partition=nosuch, account=vlm, nodes=1, gpus_per_node=1" in done.stderr


def interruptible() -> None:
    """In a child before it starts: Ctrl-C's default action, which a background job (CI under
    nohup ... &) inherits as ignored and Python then never turns into KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_sbatch_submits_says_to_look_before_submitting_again(tmp_path):
    """Interrupted while sbatch runs, the command cannot know whether SLURM took the array: it says
    so, and where to look, exit 130, no traceback. (Ctrl-C after submission: tests/test_sweeps_slurm.py.)"""
    import signal
    import subprocess
    import sys
    import time

    started = tmp_path / "sbatch-started"
    env = with_sbatch(tmp_path, f"#!/bin/sh\necho $$ > {started}\nexec sleep 60\n")
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(REPO_ROOT / "launch" / "train.py"), "-m", "hydra/launcher=slurm", "resampler=mlp",
               f"hydra.sweep.dir={sweep}"]  # fmt: skip
    launcher = subprocess.Popen(
        command, cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=interruptible
    )
    try:
        deadline = time.monotonic() + 120
        while (
            not (started.exists() and started.read_text().strip())
            and time.monotonic() < deadline
            and launcher.poll() is None
        ):
            time.sleep(0.2)
        assert started.exists(), "sbatch was never called"
        launcher.send_signal(signal.SIGINT)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if started.exists() and started.read_text().strip():  # the stand-in sbatch (its sleep: exec keeps the pid)
            subprocess.run(["kill", started.read_text().strip()], check=False, capture_output=True)
    assert launcher.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"interrupted while submitting the job array of {sweep}: `squeue --me` shows whether SLURM took it" in stderr


# ---------------------------------------------------------------------------------------------
# A sweep with Hydra's basic launcher (jobs one after another in the same process).
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("basic-sweep")
    sweep = root / "multirun" / "two"
    done = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=basic",
        "resampler=mlp,bimamba",
        "resampler.hidden_dim=16",
        *SMALL,
        f"hydra.sweep.dir={sweep}",
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


def test_sweep_layout_snapshot_and_manifest(basic_sweep):
    sweep = basic_sweep
    record = manifest(sweep)
    assert record["launcher"] == "basic"
    if (REPO_ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", record["git"]["sha"])
    assert [j["overrides"][0] for j in record["jobs"]] == ["resampler=mlp", "resampler=bimamba"]
    for job in record["jobs"]:
        job_dir = sweep / job["dir"]
        assert job["dir"] == dirs.job_dir_name(job["num"], job["overrides"])
        assert yaml.safe_load((job_dir / dirs.OVERRIDES).read_text()) == job["overrides"]
        assert status(job_dir)["status"] == "done"
        assert (job_dir / "resampler" / layout.METADATA).is_file()
        # Hydra composed the job from the sweep's snapshot of conf/, not from the repository's.
        hydra_cfg = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
        main = [s for s in hydra_cfg["runtime"]["config_sources"] if s["provider"] == "main"]
        assert main == [{"path": str(sweep / dirs.CONF_SNAPSHOT), "schema": "file", "provider": "main"}]
    assert sorted(p.name for p in dirs.job_dirs(sweep)) == sorted(j["dir"] for j in record["jobs"]), "no other job dirs"
    names = {
        yaml.safe_load((sweep / j["dir"] / layout.RESOLVED_CONFIG).read_text())["experiment"]["name"]
        for j in record["jobs"]
    }
    assert len(names) == 1 and ["%Y-%m-%d_%H-%M-%S"] in [args for args, _ in record["now"]], "one ${now:} for the sweep"
    snapshot = sweep / dirs.CONF_SNAPSHOT
    assert (snapshot / "train.yaml").is_file() and (snapshot / "hydra" / "launcher" / "slurm.yaml").is_file()
    if record["git"]["dirty"]:
        assert (sweep / dirs.GIT_DIFF).is_file()


def test_the_same_sweep_dir_is_not_reused(basic_sweep):
    done = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=basic",
        "resampler=mlp",
        "resampler.hidden_dim=16",
        *SMALL,
        f"hydra.sweep.dir={basic_sweep}",
        cwd=basic_sweep.parent,
    )
    assert done.returncode == 2 and "already holds a sweep" in done.stderr and "--resume" in done.stderr


def test_summarize_writes_one_row_per_job(basic_sweep):
    from vlm_resampler.config.preflight import compose
    from vlm_resampler.sweeps.check import model_report

    done = run_cli("summarize.py", str(basic_sweep))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 of 2 job(s) done" in done.stdout
    with open(basic_sweep / dirs.SUMMARY_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["resampler_type"] for r in rows] == ["mlp", "bimamba"] and {r["status"] for r in rows} == {"done"}
    for row, job in zip(rows, manifest(basic_sweep)["jobs"]):
        expected = model_report(compose("train", job["overrides"]))
        assert int(row["params_total"]) == expected["parameters"]["total"]
        assert int(row["params_resampler"]) == expected["parameters"]["resampler"]
        assert int(row["tokens_per_image"]) == expected["tokens"]["tokens_per_image"]
        assert float(row["resampler_final_loss"]) > 0 and float(row["resampler_samples_per_s"]) > 0
        steps, per_step = int(row["resampler_steps"]), float(row["resampler_s_per_step"])
        # s/step is the stage's train runtime over its steps: batch / samples_per_s for an even split.
        assert steps > 0 and per_step == pytest.approx(4 / float(row["resampler_samples_per_s"]), rel=0.05)
        assert row["resampler"] in ("mlp", "bimamba"), "the swept key is a column"
    text = (basic_sweep / dirs.SUMMARY_MD).read_text()
    assert "| job | status | resampler |" in text and "2 of 2 job(s) done" in text
    assert (basic_sweep / dirs.SUMMARY_PNG).stat().st_size > 1000


def test_resume_reruns_only_unfinished_jobs_into_their_dirs_from_the_snapshot(basic_sweep):
    sweep = basic_sweep
    jobs = manifest(sweep)["jobs"]
    kept, redo = sweep / jobs[0]["dir"], sweep / jobs[1]["dir"]
    kept_mtime = (kept / layout.RESOLVED_CONFIG).stat().st_mtime
    first_name = yaml.safe_load((kept / layout.RESOLVED_CONFIG).read_text())["experiment"]["name"]
    # As if the job had never started (cancelled while queued): its directory as submitted.
    for path in redo.iterdir():
        if path.name != dirs.OVERRIDES:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (redo / layout.STATUS).write_text(json.dumps({"status": "queued"}))
    # What a queued job will run is the snapshot: change it, and the resubmitted job must follow.
    smoke = sweep / dirs.CONF_SNAPSHOT / "debug" / "smoke.yaml"
    smoke.write_text(smoke.read_text().replace("num_train: 12", "num_train: 8"))
    assert "num_train: 12" in (REPO_ROOT / "conf" / "debug" / "smoke.yaml").read_text()

    listed = run_cli("summarize.py", str(sweep))
    assert listed.returncode == 1 and f"{redo.name}: never started" in listed.stdout

    done = run_cli("summarize.py", "--resume", str(sweep))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"resubmitting 1 job(s) of {sweep}: {redo.name}" in done.stdout and "2 of 2 job(s) done" in done.stdout
    assert status(redo)["status"] == "done"
    resolved = yaml.safe_load((redo / layout.RESOLVED_CONFIG).read_text())
    assert resolved["data"]["num_train"] == 8
    assert resolved["experiment"]["name"] == first_name, "${now:} values are the first submission's"
    assert (kept / layout.RESOLVED_CONFIG).stat().st_mtime == kept_mtime, "a done job is not run again"
    assert sorted(p.name for p in dirs.job_dirs(sweep)) == sorted(j["dir"] for j in jobs)
    assert manifest(sweep)["resubmissions"][-1]["jobs"] == [redo.name]

    nothing = run_cli("summarize.py", "--resume", str(sweep), "--no-counts")
    assert nothing.returncode == 0 and "nothing to resume" in nothing.stdout


def test_summarize_refuses_a_directory_that_is_not_a_sweep(tmp_path):
    done = run_cli("summarize.py", str(tmp_path))
    assert done.returncode == 2 and "no jobs" in done.stderr
    # launcher settings after --resume are read as such (argparse's default stops at the option)
    done = run_cli("summarize.py", str(tmp_path), "--resume", "hydra.launcher.partition=gpu")
    assert done.returncode == 2 and "no jobs" in done.stderr, done.stderr
    done = run_cli("summarize.py", str(tmp_path), "--resume", "resampler=mlp")
    assert done.returncode == 2 and "only launcher settings (hydra.*) may change" in done.stderr, done.stderr


def test_local_launcher_runs_the_job_in_a_fresh_process_into_its_named_dir(tmp_path):
    """hydra/launcher=local: submitit's code path (the pickled launcher, the job composed again in
    its own process) without a cluster."""
    sweep = tmp_path / "sweep"
    done = run_cli(
        "train.py", "-m", "hydra/launcher=local", "resampler=mlp", *SMALL, f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (job,) = manifest(sweep)["jobs"]
    assert [p.name for p in dirs.job_dirs(sweep)] == [job["dir"]] and status(sweep / job["dir"])["status"] == "done"
    assert (sweep / ".submitit").is_dir()


@pytest.mark.slow
def test_eval_after_training_puts_metrics_in_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=basic",
        "resampler=mlp",
        *SMALL,
        "eval_after=true",
        'eval_args=["baselines=false","meteor=false"]',
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    job_dir = dirs.job_dirs(sweep)[0]
    assert status(job_dir) | {"eval": "resampler/eval"} == status(job_dir) and status(job_dir)["status"] == "done"
    assert (job_dir / "resampler" / "eval" / "synthpano-test" / "metrics.json").is_file()
    summary = run_cli("summarize.py", str(sweep), "--no-counts")
    assert summary.returncode == 0, summary.stderr[-2000:]
    with open(sweep / dirs.SUMMARY_CSV, newline="") as f:
        row = next(csv.DictReader(f))
    assert row["eval_dir"] == "resampler/eval/synthpano-test" and row["eval_CIDEr"] != ""
    metrics = json.loads((job_dir / "resampler" / "eval" / "synthpano-test" / "metrics.json").read_text())
    assert float(row["eval_image_gap"]) == metrics["image_dependence"]["gap"]
    assert float(row["eval_QA"]) == metrics["qa"]["exact_match"]
    assert metrics["qa"]["by_kind"] and all(
        float(row[f"eval_QA_{kind}"]) == numbers["exact_match"] for kind, numbers in metrics["qa"]["by_kind"].items()
    )
    assert "eval image_gap" in (sweep / dirs.SUMMARY_MD).read_text()


def test_eval_after_builds_its_command_with_the_default_and_with_extra_eval_args(tmp_path):
    # The default eval_args is an empty list: it once failed every eval_after job (empty ListConfig
    # is falsy, and a plain [] is not an OmegaConf container).
    from omegaconf import OmegaConf

    from vlm_resampler.sweeps.job import eval_command

    stage_dir = tmp_path / "resampler"
    base = eval_command(OmegaConf.create({"eval_after": True, "eval_args": []}), stage_dir)
    assert base[-1] == f"checkpoint_dir={stage_dir}" and base[1].endswith("launch/eval.py")
    extra = eval_command(
        OmegaConf.create({"eval_after": True, "eval_args": ["max_items=5", "baselines=false"]}), stage_dir
    )
    assert extra == base + ["max_items=5", "baselines=false"]


# ---------------------------------------------------------------------------------------------
# Spread: each eval number's interval, and a setting's mean and deviation over seeds.
# ---------------------------------------------------------------------------------------------


def finished_job(
    sweep: Path, num: int, overrides: list[str], cider: float, bounds: list[float], loss: float, items=None
) -> None:
    """A job directory as a finished job with an eval leaves it (what summarize reads); `items`:
    (each item's CIDEr, its panorama) for item_scores.csv, which evals before it did not write."""
    from conftest import write_eval

    job = sweep / dirs.job_dir_name(num, overrides)
    out = job / "resampler" / "eval" / "synthpano-test"
    if items is None:
        out.mkdir(parents=True)
    else:
        write_eval(out, *items)
    (job / dirs.OVERRIDES).write_text(yaml.safe_dump(overrides))
    (job / layout.STATUS).write_text(json.dumps({"status": "done"}))
    (job / "resampler" / layout.TRAIN_METRICS).write_text(json.dumps({"final_loss": loss, "steps": 10}))
    metrics = {"dataset": "synthpano", "split": "test", "model": {"CIDEr": cider}}
    (out / "metrics.json").write_text(json.dumps(metrics | {"intervals": {"bounds": {"CIDEr": bounds}}}))


def test_summarize_shows_each_eval_interval_and_the_spread_over_seeds(tmp_path):
    from vlm_resampler.sweeps.summarize import write_summary

    sweep = tmp_path / "sweep"
    runs = [  # (resampler, seed, CIDEr, its interval, final loss)
        ("mlp", 0, 1.0, [0.5, 1.5], 2.0),
        ("mlp", 1, 2.0, [1.5, 2.5], 4.0),
        ("mlp", 2, 3.0, [2.5, 3.5], 6.0),
        ("perceiver", 0, 5.0, [4.0, 6.0], 1.0),
        ("perceiver", 1, 7.0, [6.0, 8.0], 3.0),
    ]
    for num, (resampler, seed, cider, bounds, loss) in enumerate(runs):
        finished_job(sweep, num, [f"resampler={resampler}", f"seed={seed}"], cider, bounds, loss)
    _, lines = write_summary(sweep, counts=False)
    assert lines[0] == f"5 of 5 job(s) done in {sweep}"

    with open(sweep / dirs.SUMMARY_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["eval_CIDEr_low"], r["eval_CIDEr_high"]) for r in rows] == [(str(b[0]), str(b[1])) for *_, b, _ in runs]
    text = (sweep / dirs.SUMMARY_MD).read_text()
    assert "| 1 [0.5, 1.5] |" in text and "| 7 [6, 8] |" in text and "95% bootstrap intervals" in text
    section = text.split("## Across seeds")[1]
    # mlp: CIDEr 1, 2, 3 -> mean 2, sd 1; loss 2, 4, 6 -> mean 4, sd 2. perceiver: 5, 7 -> 6 +- 1.414.
    assert "| mlp | 0, 1, 2 | 2 ± 1 (3) | 4 ± 2 (3) |" in section
    assert "| perceiver | 0, 1 | 6 ± 1.4 (2) | 2 ± 1.4 (2) |" in section
    assert (sweep / dirs.SUMMARY_PNG).stat().st_size > 1000

    # A sweep that does not vary the seed has no such section, and seed is never the plot's x axis.
    from vlm_resampler.sweeps.collect import collect
    from vlm_resampler.sweeps.summarize import plot_axis

    jobs, _, _ = collect(sweep, counts=False)
    assert plot_axis(jobs) is None
    single = tmp_path / "single"
    finished_job(single, 0, ["resampler=mlp"], 1.0, [0.5, 1.5], 2.0)
    finished_job(single, 1, ["resampler=perceiver"], 2.0, [1.5, 2.5], 2.0)
    write_summary(single, counts=False)
    text = (single / dirs.SUMMARY_MD).read_text()
    assert "Across seeds" not in text
    assert "No job paired with the best:" in text and "no item_scores.csv" in text, "evals older than item scores"
    # Its plot's eval panels draw each job's interval as the error bar (below, above the value).
    from vlm_resampler.sweeps.summarize import interval_bars

    single_jobs, _, _ = collect(single, counts=False)
    assert interval_bars(single_jobs, "CIDEr") == [[0.5, 0.5], [0.5, 0.5]]
    assert interval_bars(single_jobs, None) is None


def test_summarize_pairs_each_job_with_the_best_over_the_same_panoramas(tmp_path):
    """Job 0 is the best, job 1 the eval set cannot tell from it, job 2 is told apart though the
    two jobs' own intervals overlap (conftest.best_tied_and_beaten); job 3's eval has no item scores."""
    from vlm_resampler.evaluation.intervals import PanoramaBootstrap
    from vlm_resampler.sweeps.summarize import write_summary

    from conftest import best_tied_and_beaten

    sweep = tmp_path / "sweep"
    units, (best, tied, beaten) = best_tied_and_beaten()
    scores = {"mlp": best, "perceiver": tied, "qformer": beaten}
    bootstrap = PanoramaBootstrap(units)
    for num, (resampler, ciders) in enumerate(scores.items()):
        bounds = bootstrap.interval(ciders, units)
        finished_job(sweep, num, [f"resampler={resampler}"], sum(ciders) / 40, bounds, 1.0, items=(ciders, units))
    finished_job(sweep, 3, ["resampler=bimamba"], 0.1, [0.0, 0.2], 1.0)
    write_summary(sweep, counts=False)
    section = (sweep / dirs.SUMMARY_MD).read_text().split("## Against the best")[1]
    names = [dirs.job_dir_name(num, [f"resampler={r}"]) for num, r in enumerate([*scores, "bimamba"])]
    assert f"| {names[0]} | mlp | best |" in section
    assert f"| {names[1]} | perceiver | -0.050 [" in section
    assert f"| {names[2]} | qformer | -0.500 [-0.500, -0.500] |" in section
    assert f"| {names[3]} | bimamba | - |" in section
    assert f"- CIDEr: best `{names[0]}`; the eval set cannot tell `{names[1]}` from it" in section
    assert f"- `{names[3]}` not paired with the best:" in section and "no item_scores.csv" in section
    # summary.csv carries the same differences at full precision, empty where a job was not paired
    with open(sweep / dirs.SUMMARY_CSV, newline="") as f:
        rows = {row["dir"]: row for row in csv.DictReader(f)}
    columns = ("CIDEr_minus_best", "CIDEr_minus_best_low", "CIDEr_minus_best_high")
    assert [float(rows[names[0]][c]) for c in columns] == [0.0, 0.0, 0.0]
    assert [float(rows[names[2]][c]) for c in columns] == pytest.approx([-0.5, -0.5, -0.5])
    tied_low, tied_high = (float(rows[names[1]][c]) for c in columns[1:])
    assert tied_low < 0 < tied_high
    assert [rows[names[3]][c] for c in columns] == ["", "", ""]
