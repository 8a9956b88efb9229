"""Optuna studies (hydra/sweeper=optuna, conf/hparams_search/): the search-space grammar, the
objective's checks, and a study end to end with hydra/launcher=basic (trials validated before they
run, the objective read from each job's eval, the same command continuing the study without
repeating a trial, summarize's trial table, best trial and plots). On a real SLURM, with the
launching process killed mid-study: test_sweeps_slurm.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vlm_resampler.catalog import CONF_DIR
from vlm_resampler.errors import ConfigError
from vlm_resampler.sweeps import dirs
from vlm_resampler.sweeps.search_space import search_space

from conftest import run_cli

# One stage, small widths: each trial trains for seconds, then evaluates 4 val items.
# A trial's eval scores its captions (the objective) and skips what the study does not read.
TRIAL = [
    "debug=smoke",
    "stages=[resampler]",
    "num_threads=1",
    "resampler.latent_dimension=32",
    "eval_args=['split=val','baselines=false','qa=false','meteor=false','max_new_tokens=4']",
]


def study_trials(sweep: Path, name: str = "perceiver_tokens"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}").trials


# ---------------------------------------------------------------------------------------------
# The search space.
# ---------------------------------------------------------------------------------------------


def test_search_space_reads_hydras_sweep_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = search_space(
        {
            "resampler.num_latents": "choice(2, 4, 8)",
            "resampler.use_ln": "choice(true, false)",
            "stage.resampler.lr": "tag(log, interval(1e-4, 1e-2))",
            "resampler.depth": "int(interval(1, 3))",
            "stage.resampler.batch_size": "range(8, 33, 8)",
            "resampler.dropout": "interval(0.0, 0.5)",
            "seed": 3,
            "nested": {"key": "choice(a, b)"},  # what hydra.sweeper.params.nested.key=... makes
        }
    )
    d = space.distributions
    assert d["resampler.num_latents"] == CategoricalDistribution([2, 4, 8])
    assert d["resampler.use_ln"] == CategoricalDistribution([True, False])
    assert d["stage.resampler.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["resampler.depth"] == IntDistribution(1, 3)
    assert d["stage.resampler.batch_size"] == IntDistribution(8, 32, step=8), "range() excludes its stop, as in Hydra"
    assert d["resampler.dropout"] == FloatDistribution(0.0, 0.5)
    assert d["nested.key"] == CategoricalDistribution(["a", "b"])
    assert space.fixed == ["seed=3"]
    overrides = space.overrides(
        {
            "resampler.num_latents": 4,
            "resampler.use_ln": False,
            "stage.resampler.lr": 0.001,
            "resampler.depth": 2,
            "stage.resampler.batch_size": 16,
            "resampler.dropout": 0.25,
            "nested.key": "b",
        }
    )
    assert overrides == [
        "seed=3",
        "nested.key=b",
        "resampler.depth=2",
        "resampler.dropout=0.25",
        "resampler.num_latents=4",
        "resampler.use_ln=false",
        "stage.resampler.batch_size=16",
        "stage.resampler.lr=0.001",
    ]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"a": "range(5, 5)"}, "range(5, 5, 1) is empty"),
        ({"a": "interval(2, 1)"}, "must have start < end"),
        ({"a": "tag(log, interval(0, 1))"}, "a log interval needs start > 0"),
        ({"a": "choice(1,"}, "not a sweep Hydra can parse"),
        ({"a": 3}, "has no search space"),
        ({}, "has no search space"),
    ],
)
def test_a_bad_search_space_names_the_key(params, message):
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.params") as err:
        search_space(params)
    assert message in str(err.value)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml")))
def test_every_hparams_search_preset_composes_validates_and_has_a_search_space(preset):
    from omegaconf import OmegaConf

    from vlm_resampler.config.preflight import compose
    from vlm_resampler.config.validate import check_objective

    cfg = compose("train", [f"hparams_search={preset}", "debug=smoke"], with_hydra=True)
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "optuna"
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.vlm_resampler_optuna.OptunaSweeper"
    space = search_space(OmegaConf.to_container(cfg.hydra.sweeper.params))
    assert space.distributions
    check_objective(cfg)  # optimized_metric names a number the job's own eval makes
    assert str(cfg.hydra.sweep.dir) == f"multirun/search-{preset}", "a fixed dir: the same command continues it"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimized_metric=val/BLEU"], "expected <split>/<name>"),
        (["optimized_metric=dev/CIDEr"], "expected <split>/<name>"),
        (["optimized_metric=val/CIDEr"], "needs eval_after=true"),
        (["optimized_metric=val/CIDEr", "eval_after=true"], "runs on the test split"),
    ],
)
def test_optimized_metric_is_checked_before_anything_runs(overrides, message):
    from vlm_resampler.cli import check_train_argv

    with pytest.raises(SystemExit) as exit_:
        check_train_argv(["debug=smoke", *overrides], configure_hub=False)
    assert exit_.value.code == 2
    # the message itself (printed to stderr) is checked through check_objective:
    from vlm_resampler.config.preflight import compose
    from vlm_resampler.config.validate import check_objective

    with pytest.raises(ConfigError, match=message):
        check_objective(compose("train", ["debug=smoke", *overrides]))


def test_objective_is_read_from_the_eval_of_its_split(tmp_path):
    from vlm_resampler.sweeps.collect import ObjectiveMissing, objective_value

    stage = tmp_path / "finetune"
    for split, cider in (("val", 1.5), ("test", 9.0)):
        out = stage / "eval" / f"synthpano-{split}"
        out.mkdir(parents=True)
        metrics = {"model": {"CIDEr": cider}, "image_dependence": {"gap": 0.25}, "qa": {"exact_match": 0.5}}
        (out / "metrics.json").write_text(json.dumps(metrics))
    assert objective_value(stage, "val/CIDEr") == 1.5
    assert objective_value(stage, "test/CIDEr") == 9.0
    assert objective_value(stage, "val/image_gap") == 0.25
    assert objective_value(stage, "val/QA") == 0.5
    with pytest.raises(ObjectiveMissing, match="no eval of the train split"):
        objective_value(stage, "train/CIDEr")
    with pytest.raises(ObjectiveMissing, match="has no 'METEOR'"):
        objective_value(stage, "val/METEOR")


def finished_trial_job(sweep: Path, job: str, ciders: list[float] | None, units: list[str]) -> None:
    """A study job as the report reads it: done after the resampler stage, with its val eval
    (item_scores.csv left out when `ciders` is None)."""
    from conftest import write_eval

    eval_dir = sweep / job / "resampler" / "eval" / "synthpano-val"
    write_eval(eval_dir, ciders or [0.0] * len(units), units, split="val")
    if ciders is None:
        (eval_dir / "item_scores.csv").unlink()
    (sweep / job / "status.json").write_text(json.dumps({"status": "done", "completed": ["resampler"]}))


def study_of(jobs: dict[str, list[float] | None], same_as: dict[int, int]):
    """An in-memory study with a completed trial per job, each valued at its mean CIDEr, then a
    trial per `same_as` entry that reused an earlier trial's job."""
    import optuna
    from optuna.distributions import IntDistribution

    from vlm_resampler.sweeps.study import JOB_DIR, SAME_AS

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("optimized_metric", "val/CIDEr")
    names = list(jobs)
    reused = [(names[earlier], {SAME_AS: earlier}) for earlier in same_as.values()]
    for number, (job, extra) in enumerate([(job, {}) for job in names] + reused):
        ciders = jobs[job]
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": number},
                distributions={"x": IntDistribution(0, 10)},
                value=sum(ciders) / len(ciders) if ciders else 0.0,
                user_attrs={JOB_DIR: job, **extra},
            )
        )
    return study


def test_each_trial_is_paired_with_the_best_over_the_same_val_panoramas(tmp_path):
    """The study's best is the maximum of a noisy number: the report says which trials the val
    panoramas cannot tell from it (trial 1: 0.05 lower on average, +-0.8 per panorama), which
    they can (trial 2: 0.5 lower on every one), which could not be paired and why (trial 3, no
    item scores), and a trial that reused the best's job is the best."""
    from vlm_resampler.sweeps.study_report import paired_with_best

    from conftest import best_tied_and_beaten

    units, (best, tied, beaten) = best_tied_and_beaten()
    jobs = {"job_0": best, "job_1": tied, "job_2": beaten, "job_3": None}
    for job, ciders in jobs.items():
        finished_trial_job(tmp_path, job, ciders, units)
    cells, lines = paired_with_best(study_of(jobs, same_as={4: 0}), tmp_path)
    assert cells[0] == cells[4] == "best" and cells[3] == "-"
    assert cells[2] == "-0.500 [-0.500, -0.500]"
    low, high = (float(x) for x in cells[1].split("[")[1].rstrip("]").split(", "))
    assert cells[1].startswith("-0.050 [") and low < 0 < high
    assert lines[0].startswith("on the 40 val panoramas, trial(s) 1 cannot be told from the best")
    assert lines[1].startswith("trial(s) 3 not paired with the best:") and "no item_scores.csv" in lines[1]

    apart, lines = paired_with_best(study_of({k: jobs[k] for k in ("job_0", "job_2")}, same_as={}), tmp_path)
    assert apart == {0: "best", 1: "-0.500 [-0.500, -0.500]"}
    assert lines == [
        "on the 40 val panoramas, the best is apart from every other completed trial (no 95% interval holds 0)"
    ]


# ---------------------------------------------------------------------------------------------
# A study end to end (hydra/launcher=basic: trials one after another in the launching process).
# ---------------------------------------------------------------------------------------------


def run_study(sweep: Path, *extra: str, cwd: Path):
    return run_cli(
        "train.py",
        "-m",
        "hparams_search=perceiver_tokens",
        *TRIAL,
        *extra,
        f"hydra.sweep.dir={sweep}",
        cwd=cwd,
        timeout=600,
    )


def test_study_runs_continues_without_repeating_a_trial_and_summarises(tmp_path):
    sweep = tmp_path / "study"
    first = run_study(sweep, "hydra.sweeper.n_trials=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    trials = study_trials(sweep)
    assert [t.number for t in trials] == [0] and all(t.state.name == "COMPLETE" for t in trials)
    manifest = json.loads((sweep / dirs.MANIFEST).read_text())
    assert manifest["kind"] == "study" and [j["trial"] for j in manifest["jobs"]] == [0]
    for trial in trials:
        # the trial's value is the job's own val CIDEr, and its overrides are the sampled parameters
        job_dir = sweep / trial.user_attrs["job_dir"]
        metrics = json.loads(next((job_dir / "resampler" / "eval").glob("*-val/metrics.json")).read_text())
        assert math.isclose(trial.value, metrics["model"]["CIDEr"])
        assert f"resampler.num_latents={trial.params['resampler.num_latents']}" in trial.user_attrs["overrides"]
        config = (job_dir / "resolved_config.yaml").read_text()
        assert f"num_latents: {trial.params['resampler.num_latents']}" in config
    finished_at = {t.number: t.datetime_complete for t in trials}

    # The same command, one trial more: only trial 1 runs.
    second = run_study(sweep, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "continuing" in second.stdout
    trials = study_trials(sweep)
    assert [t.number for t in trials] == [0, 1] and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.number: t.datetime_complete for t in trials[:1]} == finished_at, "a finished trial ran again"
    assert len(dirs.job_dirs(sweep)) == 2
    assert len(json.loads((sweep / dirs.MANIFEST).read_text())["continued"]) == 1

    # Other overrides are another study: refused, nothing run.
    other = run_study(sweep, "hydra.sweeper.n_trials=5", "seed=1", cwd=tmp_path)
    assert other.returncode == 2 and "already holds another study" in other.stderr
    assert len(study_trials(sweep)) == 2

    summary = run_cli("summarize.py", str(sweep), "--no-counts", cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr[-3000:]
    best = max(trials, key=lambda t: t.value)
    assert f"best: trial {best.number}" in summary.stdout
    text = (sweep / dirs.SUMMARY_MD).read_text()
    assert "## Study" in text and "| trial | state | val/CIDEr |" in text
    assert text.count("| complete |") == 2
    # the trial that is not the best, paired with it over the same val panoramas
    assert "| val/CIDEr - best [95%] |" in text and "| best |" in text
    assert "cannot be told from the best" in text or "the best is apart from" in text
    for name in ("study_history.png", "study_importances.png", "study_slice.png", "report.html"):
        assert (sweep / name).stat().st_size > 1000, name
    assert "resampler.num_latents" in (sweep / "report.html").read_text()
    resume = run_cli("summarize.py", "--resume", str(sweep), cwd=tmp_path)
    assert resume.returncode == 2 and "its own command continues it" in resume.stderr


def test_a_trial_with_the_config_of_another_reuses_its_job_and_result(tmp_path):
    sweep = tmp_path / "study"
    one_config = [
        "+hydra.sweeper.params.resampler.num_latents='choice(4)'",
        "+hydra.sweeper.params.resampler.depth='choice(1)'",
        "+hydra.sweeper.params.stage.resampler.lr='choice(0.001)'",
    ]
    done = run_study(sweep, *one_config, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = study_trials(sweep)
    assert first.state.name == second.state.name == "COMPLETE" and first.value == second.value
    assert second.user_attrs["same_as_trial"] == 0 and second.user_attrs["job_dir"] == first.user_attrs["job_dir"]
    assert len(dirs.job_dirs(sweep)) == 1, "the same config ran once"


def test_an_invalid_trial_is_recorded_failed_with_its_reason_and_runs_nothing(tmp_path):
    sweep = tmp_path / "study"
    done = run_study(
        sweep, "+hydra.sweeper.params.resampler.depth='choice(0)'", "hydra.sweeper.n_trials=2", cwd=tmp_path
    )
    assert done.returncode == 1, "no trial completed: the command fails"
    assert "no trial of study perceiver_tokens completed" in done.stderr
    trials = study_trials(sweep)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("invalid config: resampler.depth=0: expected an int >= 1" in t.user_attrs["failure"] for t in trials)
    assert dirs.job_dirs(sweep) == [], "an invalid trial is never launched"
    summary = run_cli("summarize.py", str(sweep), cwd=tmp_path)
    assert summary.returncode == 1 and "2 fail" in summary.stdout
    assert "expected an int &gt;= 1" in (sweep / "report.html").read_text()


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimized_metric=null", "hydra/sweeper=optuna needs optimized_metric"),
        ("+hydra.sweeper.params.resampler.depth='interval(3, 1)'", "resampler.depth: interval(3.0, 1.0) must have start < end"),
    ],
)  # fmt: skip
def test_a_bad_study_is_refused_before_anything_is_written(override, message, tmp_path):
    sweep = tmp_path / "study"
    done = run_cli("train.py", "-m", "hparams_search=perceiver_tokens", *TRIAL, override, f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr and "Nothing was submitted" in done.stderr
    assert not sweep.exists()
