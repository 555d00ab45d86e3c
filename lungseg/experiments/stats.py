"""Paired per-image statistics of a row against its table's reference row, from the records alone.

Every record keeps its per-image rows (``per_image``: one row per test image, keyed by ``id``), and
every row of a table is tested on the same images. For a row R and the reference row A (the table's
first row):

1. per image, the metric's mean over the seeds that **both** rows ran (a seed is one training run;
   averaging over seeds first keeps the test's unit the test image, so the seeds do not count as
   extra, dependent observations); images where either row's value is undefined (missing/NaN, e.g.
   Dice of an image with an empty mask and an empty prediction) are left out;
2. the differences ``d_i = R_i − A_i`` over the ``n`` images left;
3. **Wilcoxon signed-rank test** of ``d`` (``scipy.stats.wilcoxon``, two-sided, zero differences
   dropped — ``zero_method="wilcox"``; exact distribution for small n without ties, else the normal
   approximation as scipy chooses);
4. **bootstrap 95 % CI of the mean difference**: :data:`N_RESAMPLES` resamples of the ``n`` images
   with replacement (``numpy.random.default_rng(`` :data:`SEED` ``)``), the 2.5th and 97.5th
   percentiles of the resampled means (percentile method).

The result says whether the rows differ **on this test set** given this training variance; it does
not generalise to other images, sizes or budgets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

N_RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class Paired:
    """A row against the reference row on one metric (values in the metric's own scale)."""

    n: int
    """Images with a defined value in both rows."""
    seeds: tuple[int, ...]
    """The seeds both rows ran (averaged per image)."""
    mean_diff: float
    ci_low: float
    ci_high: float
    p: float
    """Two-sided Wilcoxon signed-rank p (NaN when every difference is zero or n = 0)."""

    def format(self, scale: float = 1.0, digits: int = 1) -> str:
        """``+2.5 [−1.0, +6.1], p 0.21, n 20``."""
        if self.n == 0:
            return "n/a"
        p = "n/a" if math.isnan(self.p) else (f"{self.p:.2g}" if self.p >= 0.001 else "<0.001")
        d = digits
        return (
            f"{self.mean_diff * scale:+.{d}f} [{self.ci_low * scale:+.{d}f}, {self.ci_high * scale:+.{d}f}], "
            f"p {p}, n {self.n}"
        )


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of ``diffs`` (NaN when none is non-zero)."""
    from scipy.stats import wilcoxon

    if not any(d != 0 for d in diffs):
        return math.nan
    return float(wilcoxon(list(diffs), zero_method="wilcox", alternative="two-sided").pvalue)


def bootstrap_ci(
    diffs: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``diffs`` (resampling with replacement, seeded)."""
    import numpy as np

    x = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def per_image_means(records, metric: str, seeds: Sequence[int]) -> dict[str, float]:
    """``{image id: mean of metric over seeds}`` for the records of ``seeds`` (images defined in all)."""
    values: dict[str, list[float]] = {}
    for record in records:
        if record.seed not in seeds:
            continue
        for row in record.per_image:
            v = row.get(metric)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            values.setdefault(str(row.get("id")), []).append(float(v) if ok else math.nan)
    return {k: sum(v) / len(v) for k, v in values.items() if len(v) == len(seeds) and not any(map(math.isnan, v))}


def paired(reference, other, metric: str = "dice") -> Paired | None:
    """``other`` against ``reference`` (records of one row each) on ``metric``; None without a common seed."""
    seeds = tuple(sorted({r.seed for r in reference} & {r.seed for r in other}))
    if not seeds:
        return None
    a, b = per_image_means(reference, metric, seeds), per_image_means(other, metric, seeds)
    ids = sorted(set(a) & set(b))
    diffs = [b[i] - a[i] for i in ids]
    if not diffs:
        return Paired(0, seeds, math.nan, math.nan, math.nan, math.nan)
    low, high = bootstrap_ci(diffs)
    return Paired(len(diffs), seeds, sum(diffs) / len(diffs), low, high, wilcoxon_p(diffs))
