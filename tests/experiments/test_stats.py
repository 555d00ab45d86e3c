"""The paired per-image statistics of the results tables, checked by hand on tiny examples."""

from __future__ import annotations

import math

import pytest

from lungseg.experiments import stats
from lungseg.experiments.records import RunRecord


def test_wilcoxon_p_by_hand():
    # all five differences positive: W- = 0, the smallest of 2^5 = 32 equally likely sign patterns,
    # two-sided p = 2 / 32
    assert stats.wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    # ranks 1..6, negatives at ranks 2 and 6: W- = 8; the 22 of 64 subsets of {1..6} with rank sum
    # ≤ 8 (1, 1, 1, 2, 2, 3, 4, 4, 4 for sums 0..8) give p = 2 * 22 / 64
    assert stats.wilcoxon_p([1, -2, 3, 4, 5, -6]) == pytest.approx(2 * 22 / 64)
    assert math.isnan(stats.wilcoxon_p([0.0, 0.0]))  # nothing to rank


def test_bootstrap_ci_by_hand():
    # two differences 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so
    # the 2.5th and 97.5th percentiles of 10 000 resampled means are 0 and 1
    assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert stats.bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    # seeded: the same call gives the same interval; the interval holds the mean
    x = [0.1, -0.2, 0.4, 0.05, 0.3, -0.1, 0.2]
    low, high = stats.bootstrap_ci(x)
    assert stats.bootstrap_ci(x) == (low, high) and low < sum(x) / len(x) < high


def _rec(row, seed, dice):
    return RunRecord.from_dict(
        {"row": row, "seed": seed, "per_image": [{"id": f"im{i}", "dice": d} for i, d in enumerate(dice)]}
    )


def test_paired_averages_each_image_over_the_common_seeds_and_drops_undefined_images():
    ref = [_rec("a", 0, [0.5, 0.6, 0.2, 0.7]), _rec("a", 1, [0.7, 0.6, 0.4, 0.1]), _rec("a", 2, [0.0] * 4)]
    other = [_rec("b", 0, [0.7, 0.6, None, 0.9]), _rec("b", 1, [0.9, 0.8, 0.5, 0.3])]  # seed 2 not run
    result = stats.paired(ref, other, "dice")
    # seeds 0 and 1; image 2 undefined in b's seed 0 → left out; per image (b - a): 0.2, 0.1, 0.2
    assert result.seeds == (0, 1) and result.n == 3
    assert result.mean_diff == pytest.approx((0.2 + 0.1 + 0.2) / 3)
    assert result.p == pytest.approx(stats.wilcoxon_p([0.2, 0.1, 0.2]))
    assert result.format(100, 1).startswith("+16.7 [")
    assert stats.paired(ref, [_rec("b", 5, [0.1] * 4)]) is None  # no common seed
