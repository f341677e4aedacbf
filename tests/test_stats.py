"""deploykit.stats: the paired 95% intervals every Δ of a report carries, and the accept rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploykit.stats import (
    Interval,
    accuracy_change_interval,
    paired_score_interval,
    resolution,
    rmse_change_interval,
    rmse_increase,
    shortfall_of,
    within_budget,
)


def test_accuracy_interval_is_paired_only_disagreeing_rows_count():
    rng = np.random.default_rng(0)
    ref = rng.random(500) < 0.85
    new = ref.copy()
    new[:10] = ~new[:10]  # 10 rows flipped, whatever the rest does
    ci = accuracy_change_interval(ref, new)
    assert ci.estimate == pytest.approx((np.sum(new) - np.sum(ref)) / 500)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.high - ci.low < 0.05  # an unpaired interval of two 85% accuracies on 500 rows is ~9 points wide
    same = accuracy_change_interval(ref, ref)  # identical on 500 rows: no change seen, but 500 rows cannot rule one out
    assert same.estimate == 0.0 and -0.01 < same.low < -0.005 and same.high == pytest.approx(-same.low)


@pytest.mark.parametrize(("gained", "lost", "n"), [(1, 7, 44), (0, 3, 225), (12, 30, 543), (40, 20, 160)])
def test_accuracy_interval_ends_are_where_the_score_test_rejects(gained, lost, n):
    # Tango (1998): each end d is where (gained - lost - n d) / sqrt(n (2 q + d (1 - d))) = -+1.96, q the
    # disagreement-rate-of-losses maximising the likelihood under d. q is found here by a numeric search over the
    # likelihood, not the closed form the module uses.
    from scipy.optimize import minimize_scalar

    def score(d):
        upper = (1 - d) / 2 if d >= 0 else (1 + d) / 2  # keep every cell probability in [0, 1]
        lo = max(0.0, -d)

        def nll(q):
            g, rest = q + d, 1 - 2 * q - d
            return -(
                gained * np.log(max(g, 1e-300))
                + lost * np.log(max(q, 1e-300))
                + (n - gained - lost) * np.log(max(rest, 1e-300))
            )

        q = minimize_scalar(nll, bounds=(lo, lo + upper), method="bounded", options={"xatol": 1e-12}).x
        return (gained - lost - n * d) / np.sqrt(n * (2 * q + d * (1 - d)))

    low, high = paired_score_interval(gained, lost, n)
    assert low < (gained - lost) / n < high
    assert score(low) == pytest.approx(1.96, abs=2e-3) and score(high) == pytest.approx(-1.96, abs=2e-3)


def test_accuracy_interval_covers_a_loss_that_gains_nothing():
    # A compressed model that loses 1% of rows and gains none: the interval must cover the true -1 pt about 95% of
    # the time. Conditioned on the number of disagreeing rows (Clopper-Pearson on them) it ended at the estimate
    # whenever every disagreeing row was a loss, and covered it in 46% of draws.
    rng = np.random.default_rng(0)
    n, draws = 543, 2000
    lost = rng.binomial(n, 0.01, size=draws)
    covered = [paired_score_interval(0, int(k), n)[0] <= -0.01 <= paired_score_interval(0, int(k), n)[1] for k in lost]
    assert 0.93 <= np.mean(covered) <= 0.99


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


def test_an_rmse_increase_over_a_reference_of_zero_error_is_the_new_rmse_in_every_place():
    """Targets equal to the reference's own outputs (an encoder distilled onto itself) give it RMSE 0: a fraction
    of 0 has no size, so the increase is the new RMSE. The budget, the interval and the report's change agree (the
    report said +0.0% beside an interval of [+0.5%, +0.5%]; ``validate`` called it an infinite increase)."""
    from deploykit.core.evaluate import Budget, Metric
    from deploykit.pipeline.context import changes

    assert rmse_increase(2.0, 2.1) == pytest.approx(0.05) and rmse_increase(0.0, 0.01) == pytest.approx(0.01)
    assert list(rmse_increase(np.array([0.0, 1.0]), np.array([0.5, 1.5]))) == [0.5, 0.5]
    t = np.zeros((50, 3))
    ci = rmse_change_interval(t, t + 0.01, t)
    assert ci.estimate == ci.low == ci.high == pytest.approx(0.01)
    budget = Budget(Metric.RMSE, 0.05)
    assert budget.shortfall(0.0, 0.01) == pytest.approx(0.01) and budget.within(0.0, 0.01)

    class Figures:
        rmse = 0.0

    class Context:
        metric, original_figures = Metric.RMSE, Figures()

    assert changes(0.01, Context())["rmse_change"] == pytest.approx(ci.estimate)
