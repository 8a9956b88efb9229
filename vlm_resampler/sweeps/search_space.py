"""An Optuna search space from `hydra.sweeper.params`, written in Hydra's own sweep grammar (the
keys and value syntax of hydra-optuna-sweeper):

    resampler.num_latents: choice(16, 32, 64)      # categorical
    stage.resampler.lr: tag(log, interval(1e-4, 3e-3))   # float, log scale
    resampler.depth: int(interval(1, 4))          # integer, both ends included
    stage.resampler.batch_size: range(8, 33, 8)   # integer steps, the end excluded as in Hydra
    seed: 3                                        # not a sweep: the same in every trial

A trial's parameters become the job's command-line overrides, so every trial composes (and is
validated) exactly as a `python launch/train.py KEY=VALUE ...` run would."""

from __future__ import annotations

from dataclasses import dataclass

from vlm_resampler.errors import ConfigError


@dataclass
class SearchSpace:
    distributions: dict  # key -> optuna distribution
    fixed: list[str]  # overrides every trial gets

    def overrides(self, params: dict) -> list[str]:
        """A trial's parameters as Hydra overrides (sorted by key, after the fixed ones)."""
        return [*self.fixed, *(f"{key}={format_value(params[key])}" for key in sorted(self.distributions))]

    def describe(self) -> dict[str, str]:
        return {key: repr(dist) for key, dist in sorted(self.distributions.items())}


def format_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _distribution(key: str, value):
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(value, ChoiceSweep):
        if not value.list:
            raise ConfigError(f"hydra.sweeper.params.{key}: choice() needs at least one value")
        return CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(x, int) for x in (start, stop, step)):
            last = start + ((stop - 1 - start) // step) * step  # Hydra's range() excludes stop
            if last < start:
                raise ConfigError(f"hydra.sweeper.params.{key}: range({start}, {stop}, {step}) is empty")
            return IntDistribution(start, last, step=step)
        return FloatDistribution(float(start), float(stop), step=float(step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if value.start >= value.end:
            raise ConfigError(f"hydra.sweeper.params.{key}: interval({value.start}, {value.end}) must have start < end")
        if log and value.start <= 0:
            raise ConfigError(f"hydra.sweeper.params.{key}: a log interval needs start > 0, got {value.start}")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    return None


def flat_params(params: dict, prefix: str = "") -> dict:
    """Dotted keys, whether written flat (`resampler.depth: ...`, as in the presets) or nested (what
    `hydra.sweeper.params.resampler.depth=...` on the command line makes)."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat |= flat_params(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def search_space(params: dict | None) -> SearchSpace:
    """`params`: hydra.sweeper.params (key -> sweep text). A ConfigError names the bad key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    distributions, fixed = {}, []
    for key, text in flat_params(params or {}).items():
        line = f"{key}={format_value(text)}"
        try:
            (override,) = parser.parse_overrides([line])
        except Exception as err:  # the override grammar's own error, as one line
            raise ConfigError(f"hydra.sweeper.params.{key}={text!r}: not a sweep Hydra can parse: {err}") from err
        dist = _distribution(key, override.value())
        if dist is None:
            fixed.append(line)
        else:
            distributions[key] = dist
    if not distributions:
        raise ConfigError(
            "hydra.sweeper.params has no search space: give at least one key a choice(), range() or interval() "
            "(conf/hparams_search/*.yaml has examples)"
        )
    return SearchSpace(distributions, fixed)
