"""An Optuna study as a Hydra sweeper (`hydra/sweeper=optuna`, conf/hydra/sweeper/optuna.yaml;
presets in conf/hparams_search/). Hydra loads it as hydra_plugins.vlm_resampler_optuna.OptunaSweeper.

Each round asks Optuna for `n_jobs` trials, validates each trial's composed config the way every
sweep job is validated before submission (train.py's checks and a meta-device build of the model:
sweeps/check.py), and hands the valid ones to the configured launcher in one call (one SLURM job
array under hydra/launcher=slurm, one after another in this process under hydra/launcher=basic).
A job returns its `optimized_metric` (train.py reads it from the eval of its last stage); a trial
whose config is invalid, whose job failed or whose objective is not finite is recorded as failed,
with the reason, and the study goes on.

The study lives in <sweep dir>/optuna.db (SQLite) unless `storage` names another. Running the same
command again continues it: finished trials (complete, failed, pruned) are never run again and
count towards `n_trials`; a trial left running by a launcher that was stopped is completed from its
job directory when that job finished meanwhile, else run again (same trial number, a new job).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict

from vlm_resampler.errors import ConfigError
from vlm_resampler.runs import layout
from vlm_resampler.sweeps import dirs
from vlm_resampler.sweeps.search_space import SearchSpace, search_space

STORAGE_FILE = "optuna.db"
DIRECTIONS = ("minimize", "maximize")
# Trial user attributes (shown by launch/summarize.py).
JOB_NUM, JOB_DIR, OVERRIDES, FAILURE, SAME_AS = "job_num", "job_dir", "overrides", "failure", "same_as_trial"


def storage_url(sweep_dir: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(Path(sweep_dir) / STORAGE_FILE).resolve()}"


def make_sampler(sampler_cfg, previous_trials: int):
    """An optuna.samplers.* sampler. A continued study reseeds it (seed + trials so far): the
    same seed would draw the first trials' random starting points again."""
    from hydra.utils import instantiate

    if sampler_cfg is None:
        return None
    node = OmegaConf.to_container(sampler_cfg, resolve=True) if OmegaConf.is_config(sampler_cfg) else dict(sampler_cfg)
    target = str(node.get("_target_", ""))
    if not target.startswith("optuna.samplers."):
        raise ConfigError(f"hydra.sweeper.sampler._target_={target!r}: expected an optuna.samplers.* class")
    if node.get("seed") is not None:
        node["seed"] = int(node["seed"]) + previous_trials
    return instantiate(node)


class OptunaStudySweeper(Sweeper):
    def __init__(
        self,
        sampler=None,
        direction: str = "maximize",
        storage: str | None = None,
        study_name: str = "study",
        n_trials: int = 20,
        n_jobs: int = 2,
        params=None,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ConfigError(f"hydra.sweeper.direction={direction!r}: expected minimize or maximize")
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"hydra.sweeper.{key}={value!r}: expected an integer >= 1")
        self.sampler_cfg, self.direction, self.storage = sampler, direction, storage
        self.study_name, self.n_trials, self.n_jobs = str(study_name), n_trials, n_jobs
        self.space: SearchSpace = search_space(
            OmegaConf.to_container(params) if OmegaConf.is_config(params) else params
        )

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.metric = config.get("optimized_metric")
        if not self.metric:
            raise ConfigError(
                "hydra/sweeper=optuna needs optimized_metric (e.g. optimized_metric=val/CIDEr): the number each "
                "job returns to the study"
            )

    # -- the study ---------------------------------------------------------------------------
    def open_study(self):
        import optuna

        url = storage_url(self.sweep_dir, self.storage)
        try:
            previous = len(optuna.load_study(study_name=self.study_name, storage=url).trials)
        except KeyError:  # no such study yet
            previous = 0
        study = optuna.create_study(
            study_name=self.study_name,
            storage=url,
            sampler=make_sampler(self.sampler_cfg, previous),
            direction=self.direction,
            load_if_exists=True,
        )
        stored = study.direction.name.lower()
        if stored != self.direction:
            raise ConfigError(
                f"hydra.sweeper.direction={self.direction}: study {self.study_name!r} in {url} was created to {stored}"
            )
        study.set_user_attr("optimized_metric", str(self.metric))
        study.set_user_attr("search_space", self.space.describe())
        return study

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.open_study()
        finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
        orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if orphans:
            numbers = ", ".join(str(t.number) for t in orphans)
            print(f"study: trial(s) {numbers} were left running by a launcher that stopped", flush=True)
            print(f"study: {self.settle_orphans(study, orphans)}", flush=True)
        while True:
            done = len(study.get_trials(deepcopy=False, states=finished))
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # to run again
            batch = running[: self.n_jobs]
            fresh = min(self.n_jobs - len(batch), self.n_trials - done - len(running))
            batch += [study.ask(self.space.distributions) for _ in range(max(0, fresh))]
            if not batch:
                break
            self.run_round(study, batch, arguments)
        self.report(study)

    def settle_orphans(self, study, orphans) -> str:
        """Trials whose launcher stopped: a job still training (it outlived the launcher, e.g. on
        SLURM) is waited for; a job that finished gives its trial the result; the rest run again."""
        import time

        from vlm_resampler.training.resume import lock_holder

        settled = []
        for trial in orphans:
            job_dir = self.sweep_dir / trial.user_attrs.get(JOB_DIR, "")
            if job_dir == self.sweep_dir:
                continue
            holder = lock_holder(job_dir)
            if holder is not None:
                print(f"study: trial {trial.number}: {holder} is still training in {job_dir}; waiting", flush=True)
                while lock_holder(job_dir) is not None:
                    time.sleep(5)
            value, why = self.result_from_dir(job_dir)
            if value is None:
                print(f"study: trial {trial.number} runs again: {why}", flush=True)
                continue
            self.tell(study, trial.number, value)
            settled.append(trial.number)
        rerun = [t.number for t in orphans if t.number not in settled]
        return f"completed from their job dirs: {settled or 'none'}; to run again: {rerun or 'none'}"

    def result_from_dir(self, job_dir: Path) -> tuple[float | None, str]:
        """(the objective of a job that finished, or None, and why not), from its directory alone."""
        from vlm_resampler.sweeps.collect import ObjectiveMissing, final_stage, objective_value, read_json_or_none

        stage = final_stage(job_dir)
        if stage is None:
            status = read_json_or_none(job_dir / layout.STATUS) or {}
            return None, f"{job_dir.name} is {status.get('status', 'not started')}"
        try:
            return objective_value(job_dir / stage, str(self.metric)), ""
        except ObjectiveMissing as err:
            return None, str(err)

    # -- one round ---------------------------------------------------------------------------
    def run_round(self, study, batch, arguments: list[str]) -> None:
        from vlm_resampler.sweeps.submit import record_jobs

        trials = study.get_trials(deepcopy=False)
        first_num = 1 + max((int(t.user_attrs.get(JOB_NUM, -1)) for t in trials), default=-1)
        runs = []  # (trial number, job number, overrides)
        groups: dict[tuple, list[int]] = {}  # a config -> [the trial that runs (or ran) it, trials reusing it]
        for trial in batch:
            overrides = [*arguments, *self.space.overrides(trial.params)]
            key = tuple(sorted(overrides))
            if key not in groups:
                earlier = self.finished_with(trials, key)
                if earlier is not None:
                    groups[key] = [earlier]
            if key in groups:  # one config, one job directory, one result
                groups[key].append(trial.number)
                continue
            try:
                self.validate(overrides)
            except ConfigError as err:
                self.fail(study, trial.number, f"invalid config: {err}")
                continue
            num = trial.user_attrs.get(JOB_NUM)  # a trial run again keeps its job (and directory)
            if num is None:
                num = first_num + sum(n >= first_num for _, n, _ in runs)
                name = dirs.sweep_job_dir(self.sweep_dir, num, overrides)
                for attr, value in ((JOB_NUM, num), (JOB_DIR, name), (OVERRIDES, overrides)):
                    set_trial_attr(study, trial.number, attr, value)
            groups[key] = [trial.number]
            runs.append((trial.number, num, overrides))
        if runs:
            record_jobs(self.sweep_dir, [(num, overrides, {"trial": number}) for number, num, overrides in runs])
            self.launch(study, runs, first_num)
        for first, *others in groups.values():
            for number in others:
                self.copy_result(study, number, first)

    @staticmethod
    def finished_with(trials, key: tuple) -> int | None:
        from optuna.trial import TrialState

        for old in trials:
            if (
                old.state in (TrialState.COMPLETE, TrialState.FAIL)
                and tuple(sorted(old.user_attrs.get(OVERRIDES, []))) == key
            ):
                return old.number
        return None

    def validate(self, overrides: list[str]) -> None:
        from vlm_resampler.sweeps.check import validate_sweep_job

        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        except Exception as err:  # Hydra's composition error for this trial's overrides
            raise ConfigError(str(err).strip().splitlines()[0]) from err
        launcher = cfg.hydra.launcher
        with open_dict(cfg):
            del cfg["hydra"]
        validate_sweep_job(cfg, launcher)

    def launch(self, study, runs: list[tuple[int, int, list[str]]], first_num: int) -> None:
        from hydra.core.utils import JobStatus

        runs = sorted(runs, key=lambda run: run[1] < first_num)  # new jobs first: Hydra numbers them from first_num
        jobs = ", ".join(f"trial {number} -> job {num}" for number, num, _ in runs)
        print(f"study: launching {jobs}", flush=True)
        try:
            returns = self.launcher.launch([overrides for _, _, overrides in runs], initial_job_idx=first_num)
        except Exception as err:  # e.g. submitit: one job killed by SLURM; the others may have finished
            launcher_error = f"{type(err).__name__}: {err}"
            returns = [None] * len(runs)
        for (number, num, _), ret in zip(runs, returns):
            if ret is None:
                value, why = self.result_from_dir(self.sweep_dir / study.trials[number].user_attrs[JOB_DIR])
                if value is None:
                    self.fail(study, number, f"the launcher failed: {launcher_error}; {why}")
                else:
                    self.tell(study, number, value)
            elif ret.status == JobStatus.COMPLETED:
                self.tell(study, number, ret.return_value)
            else:
                error = ret._return_value  # the exception (the public property re-raises it)
                self.fail(study, number, f"job {num} failed: {type(error).__name__}: {error}")

    # -- results -----------------------------------------------------------------------------
    def tell(self, study, number: int, value) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self.fail(study, number, f"the job returned {value!r}, not a number (optimized_metric={self.metric})")
        elif not math.isfinite(value):
            self.fail(study, number, f"diverged: {self.metric} = {value}")
        else:
            study.tell(number, float(value))
            best = study.best_trial
            print(
                f"study: trial {number}: {self.metric} = {value:.4g} (best: trial {best.number}, {best.value:.4g})",
                flush=True,
            )

    def fail(self, study, number: int, reason: str) -> None:
        from optuna.trial import TrialState

        set_trial_attr(study, number, FAILURE, reason)
        study.tell(number, state=TrialState.FAIL)
        print(f"study: trial {number} failed: {reason}", file=sys.stderr, flush=True)

    def copy_result(self, study, number: int, source: int) -> None:
        ran = study.trials[source]
        for key in (JOB_NUM, JOB_DIR, OVERRIDES):
            if key in ran.user_attrs:
                set_trial_attr(study, number, key, ran.user_attrs[key])
        set_trial_attr(study, number, SAME_AS, source)
        if ran.value is not None:
            study.tell(number, ran.value)
        else:
            self.fail(study, number, f"the same config as trial {source}, which failed")

    def report(self, study) -> None:
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        line = f"study {self.study_name}: {len(complete)} complete, {len(failed)} failed, in {self.sweep_dir}"
        if complete:
            best = study.best_trial
            where = self.sweep_dir / best.user_attrs.get(JOB_DIR, "?")
            line += f"; best: trial {best.number}, {self.metric} = {best.value:.4g} ({where})"
        print(f"{line}\nsummarize with: python launch/summarize.py {self.sweep_dir}", flush=True)
        if not complete:
            sys.exit(f"error: no trial of study {self.study_name} completed (reasons above and in the summary)")


def set_trial_attr(study, number: int, key: str, value) -> None:
    """A user attribute on trial `number` of `study`, whatever state it is in. Optuna's public
    setter needs the live Trial object, which a trial asked by an earlier launcher no longer has."""
    storage = study._storage
    storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study._study_id, number), key, value)
