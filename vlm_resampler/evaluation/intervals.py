"""How far a score could move with another draw of the test panoramas: percentile bootstrap
intervals, written into metrics.json as `intervals` and shown wherever the score is.

The unit resampled is the panorama, not the item: the captions and questions of one panorama
share its image, so a model's errors on them move together, and resampling them one by one would
draw intervals that are too narrow (a test shows how much). Every metric of one eval is read off
the same resamples. CIDEr is the mean of its per-item scores, each under the IDF of the whole
evaluated set, which is held fixed across resamples (recomputing it per resample would move the
score with the references drawn as well as with the model's captions).

Torch-free, like the rest of the scoring path.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


class PanoramaBootstrap:
    """One set of resamples of the panoramas in `units` (each a panorama's path), shared by every
    metric of one eval."""

    def __init__(self, units: list[str], resamples: int = RESAMPLES, seed: int = SEED) -> None:
        self.units = sorted(set(units))
        if not self.units:
            raise ValueError("no panoramas to resample")
        self.position = {unit: i for i, unit in enumerate(self.units)}
        n = len(self.units)
        # draws[r, p]: how often panorama p is drawn in resample r (n draws with replacement)
        self.draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
        self.resamples, self.seed = resamples, seed

    def means(self, values: list[float], units: list[str]) -> np.ndarray:
        """The mean of `values` (item i belongs to panorama units[i]) in every resample; NaN in a
        resample that drew none of their panoramas."""
        if len(values) != len(units):
            raise ValueError(f"{len(values)} values for {len(units)} panorama names")
        try:
            index = np.array([self.position[u] for u in units], dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"{err.args[0]} is not one of the {len(self.units)} panoramas resampled") from None
        sums = np.bincount(index, weights=np.asarray(values, dtype=np.float64), minlength=len(self.units))
        counts = np.bincount(index, minlength=len(self.units)).astype(np.float64)
        drawn = self.draws @ counts
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(drawn > 0, (self.draws @ sums) / drawn, np.nan)

    def interval(self, values: list[float], units: list[str], level: float = LEVEL) -> list[float]:
        """[low, high]: the central `level` share of the resampled means."""
        return central(self.means(values, units), level)

    def describe(self, level: float = LEVEL) -> dict:
        return {
            "level": level,
            "method": "percentile bootstrap over panoramas (each drawn with all its captions and questions)",
            "panoramas": len(self.units),
            "resamples": self.resamples,
            "seed": self.seed,
        }

    def record(self, bounds: dict[str, list[float]], level: float = LEVEL) -> dict:
        """metrics.json's `intervals`: how they were drawn, and each metric's [low, high]."""
        return self.describe(level) | {"bounds": bounds}


def central(means: np.ndarray, level: float = LEVEL) -> list[float]:
    """[low, high]: the central `level` share of resampled means (NaN, a resample that drew none of
    the metric's panoramas, left out)."""
    tail = (1.0 - level) / 2 * 100
    low, high = np.nanpercentile(means, [tail, 100 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def interval_text(intervals: dict | None, name: str, digits: int = 3) -> str:
    """' [low, high]' for `name`, or '' where the eval drew none (an eval older than intervals)."""
    bounds = ((intervals or {}).get("bounds") or {}).get(name)
    if not bounds:
        return ""
    return f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def cider_interval_line(results: dict) -> str | None:
    """The model's CIDEr with its interval and how the intervals were drawn, for an eval's printout
    and report; None for an eval without intervals."""
    intervals = results.get("intervals")
    if not intervals:
        return None
    return (
        f"model CIDEr {results['model']['CIDEr']:.4f}{interval_text(intervals, 'CIDEr', 4)}: "
        f"{intervals['level']:.0%} intervals (here and below) from {intervals['resamples']} bootstrap resamples "
        f"of the {intervals['panoramas']} panoramas"
    )
