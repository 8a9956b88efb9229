"""Hydra instantiates sweepers only from the hydra_plugins namespace: this names the project's
Optuna study sweeper (vlm_resampler/sweeps/study.py) there, for hydra/sweeper=optuna."""

from vlm_resampler.sweeps.study import OptunaStudySweeper


class OptunaSweeper(OptunaStudySweeper):
    pass


def register() -> None:
    """Hydra's plugin scan does not see this package in an editable install (setuptools' editable
    finder hides namespace portions from pkgutil), so launch/train.py registers it explicitly."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(OptunaSweeper)
