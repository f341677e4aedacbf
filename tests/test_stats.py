"""deploykit.stats: the paired 95% intervals every Δ of a report carries, and the accept rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploykit.stats import (
    Interval,
    accuracy_change_interval,
    clopper_pearson,
    resolution,
    rmse_change_interval,
    shortfall_of,
    within_budget,
)


def test_clopper_pearson_matches_the_beta_quantiles():
    from scipy.stats import beta

    for c, m in ((3, 6), (0, 10), (10, 10), (17, 40), (400, 1000)):
        low, high = clopper_pearson(c, m)
        assert low == pytest.approx(0.0 if c == 0 else beta.ppf(0.025, c, m - c + 1), abs=1e-9)
        assert high == pytest.approx(1.0 if c == m else beta.ppf(0.975, c + 1, m - c), abs=1e-9)


def test_accuracy_interval_is_paired_only_disagreeing_rows_count():
    rng = np.random.default_rng(0)
    ref = rng.random(500) < 0.85
    new = ref.copy()
    new[:10] = ~new[:10]  # 10 rows flipped, whatever the rest does
    ci = accuracy_change_interval(ref, new)
    assert ci.estimate == pytest.approx((np.sum(new) - np.sum(ref)) / 500)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.high - ci.low < 0.05  # an unpaired interval of two 85% accuracies on 500 rows is ~9 points wide
    assert accuracy_change_interval(ref, ref) == Interval(0.0, 0.0, 0.0)  # identical predictions: no difference


@given(st.integers(0, 30), st.integers(0, 30), st.integers(0, 200))
def test_accuracy_interval_holds_its_estimate_and_stays_in_range(gained, lost, same):
    ref = np.array([False] * gained + [True] * lost + [True] * same)
    new = np.array([True] * gained + [False] * lost + [True] * same)
    if len(ref) == 0:
        return
    ci = accuracy_change_interval(ref, new)
    assert -1 <= ci.low <= ci.estimate <= ci.high <= 1


def test_rmse_interval_is_a_paired_bootstrap_of_the_relative_change():
    rng = np.random.default_rng(1)
    t = rng.normal(size=400)
    ref = t + rng.normal(scale=0.5, size=400)
    ci = rmse_change_interval(ref, ref + rng.normal(scale=0.01, size=400), t)
    assert abs(ci.estimate) < 0.02 and ci.low <= ci.estimate <= ci.high and ci.high - ci.low < 0.05
    worse = rmse_change_interval(ref, t + 2 * (ref - t), t)  # every error doubled: +100%, no noise
    assert worse.estimate == pytest.approx(1.0) and worse.low == pytest.approx(1.0) and worse.high == pytest.approx(1.0)
    assert rmse_change_interval(ref, ref, t) == rmse_change_interval(ref, ref, t)  # seeded: reproducible


def test_resolution_shrinks_with_rows():
    assert resolution(270, 0.02) > resolution(542, 0.02) > 0.01 > resolution(2000, 0.02)


def test_the_accept_rule_takes_the_estimate_and_refuses_an_interval_entirely_beyond_the_budget():
    # a 0.55-pt drop with a wide interval is within a one-point budget; a 1.1-pt drop is not
    assert within_budget(shortfall_of(Interval(-0.0055, -0.02, 0.01), accuracy=True), 0.01)
    assert not within_budget(shortfall_of(Interval(-0.011, -0.03, 0.005), accuracy=True), 0.01)
    assert not within_budget(Interval(0.02, 0.015, 0.03), 0.01)  # RMSE +2%, interval entirely beyond a 1% budget
