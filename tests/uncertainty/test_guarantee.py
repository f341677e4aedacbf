"""Abstention with a guarantee: the kept accuracy (RMSE) reaches its target on unseen data with probability
>= 1 - delta."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import ConfigError
from deploykit.uncertainty.guarantee import accuracy_lower_bounds, clopper_pearson_lower
from deploykit.uncertainty.measures import Measure
from deploykit.uncertainty.selective import (
    SelectiveTarget,
    apply_threshold,
    choose_regression_threshold,
    choose_threshold,
)


def _draw(n, rng):
    """u ~ U(0, 1), a row is wrong with probability u**2: the population accuracy of u <= t is 1 - t**2 / 3."""
    u = rng.uniform(0, 1, n)
    y = rng.integers(0, 5, n)
    return y, np.where(rng.uniform(0, 1, n) < u**2, (y + 1) % 5, y), u


def test_clopper_pearson_is_the_binomial_tail_inversion():
    from scipy.stats import binom

    bound = float(clopper_pearson_lower(95, 100, 0.1))
    assert binom.sf(94, 100, bound) == pytest.approx(0.1, abs=1e-6)  # P(>= 95 correct | rate = bound) = level
    assert clopper_pearson_lower(0, 10, 0.1) == 0.0
    assert accuracy_lower_bounds(np.ones(45, bool), 0.1)[-1] == pytest.approx(0.1 ** (1 / 45))


def test_target_holds_on_the_population_in_at_least_1_minus_delta_of_splits():
    """The population accuracy of the chosen cut (known in closed form) misses the target in at most delta of draws,
    where the point rule misses it about half the time."""
    rng = np.random.default_rng(0)
    target, misses, point_misses, kept = 0.9, 0, 0, []
    for _ in range(200):
        y, pred, u = _draw(1000, rng)
        chosen = choose_threshold(y, pred, u, Measure.ENTROPY, SelectiveTarget(target_accuracy=target))
        t = min(max(chosen.threshold, 0.0), 1.0)
        misses += t > 0 and 1 - t**2 / 3 < target
        assert chosen.bound <= chosen.accuracy and chosen.bound >= target
        point = choose_threshold(
            y, pred, u, Measure.ENTROPY, SelectiveTarget(target_accuracy=target, target_delta=None)
        )
        tp = min(max(point.threshold, 0.0), 1.0)
        point_misses += 1 - tp**2 / 3 < target
        kept.append(chosen.coverage)
    assert misses / 200 <= 0.1
    assert point_misses / 200 > 0.25
    assert 0.4 < np.mean(kept) < np.sqrt(0.3)  # the population's best cut keeps sqrt(0.3) of the rows


def test_rmse_bound_and_the_metadata_say_what_was_promised():
    import json

    rng = np.random.default_rng(1)
    std = rng.uniform(0.1, 3.0, 2000)
    y, mean, width = rng.normal(size=2000) * std, np.zeros((2000, 1)), 2 * 1.96 * std
    chosen = choose_regression_threshold(y, mean, width, SelectiveTarget(target_accuracy=None, target_rmse=1.0))
    assert chosen.rmse <= chosen.bound <= 1.0 and 0.2 < chosen.coverage < 0.6
    meta = json.loads(chosen.metadata_value())
    assert meta["target_delta"] == 0.1 and meta["bound"] == chosen.bound and "Student-t" in meta["bound_kind"]
    y, pred, u = _draw(500, rng)
    chosen = choose_threshold(y, pred, u, Measure.ENTROPY, SelectiveTarget(target_accuracy=0.9))
    meta = json.loads(chosen.metadata_value())
    assert "Clopper-Pearson" in meta["bound_kind"] and meta["bound"] >= 0.9
    assert apply_threshold(y, pred, u, meta["threshold"]).coverage == meta["validation_coverage"]
    with pytest.raises(ConfigError, match="target_delta"):
        SelectiveTarget(target_accuracy=0.9, target_delta=1.0)


def test_the_report_puts_the_bound_beside_the_validation_accuracy():
    from deploykit.uncertainty.compare import SelectiveReport, extra_markdown

    rng = np.random.default_rng(2)
    y, pred, u = _draw(2000, rng)
    for target, expected in (
        (SelectiveTarget(target_accuracy=0.9), "lower bound 9"),
        (SelectiveTarget(target_accuracy=0.9, target_delta=None), "point estimate"),
        (SelectiveTarget(target_accuracy=1.0), "abstains on every row"),
    ):
        chosen = choose_threshold(y, pred, u, Measure.ENTROPY, target)
        report = SelectiveReport(chosen, apply_threshold(y, pred, u, chosen.threshold))
        assert expected in "\n".join(extra_markdown({"selective": report.to_dict()}))
