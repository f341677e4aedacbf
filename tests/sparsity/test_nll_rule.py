"""The sparsity search's NLL condition (issue 22): a try within the accuracy budget is kept only when its validation
NLL, as the run would ship it, is within ``max_nll_increase`` of the original's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from deploykit.core.evaluate import Budget, Metric
from deploykit.core.task import OutputKind
from deploykit.sparsity.nll_rule import NllRule, judge
from deploykit.sparsity.search import SearchTry, miss_note
from deploykit.stats import Interval, accepted
from deploykit.uncertainty.generalises import kept_temperature_nll

PROBS = OutputKind.PROBABILITIES


def _rows(n: int, right: float, confident: float, wrong_rows: int, seed: int = 0):
    """``n`` rows of 3 classes: ``right`` on the label everywhere but ``wrong_rows`` rows, which put ``confident``
    on the next class."""
    y = np.random.default_rng(seed).integers(0, 3, n)
    p = np.full((n, 3), (1 - right) / 2)
    p[np.arange(n), y] = right
    wrong = np.arange(wrong_rows)
    p[wrong] = (1 - confident) / 2
    p[wrong, (y[wrong] + 1) % 3] = confident
    return p, y


def test_judge_measures_the_relative_nll_change_on_the_same_rows():
    y = np.array([0, 1, 1, 0])
    original = np.array([[0.8, 0.2], [0.2, 0.8], [0.2, 0.8], [0.8, 0.2]])
    new = np.array([[0.7, 0.3], [0.2, 0.8], [0.2, 0.8], [0.8, 0.2]])
    figure = judge(new, original, y, NllRule(0.02, PROBS))
    expected_original = -np.log(0.8)
    expected_new = (-np.log(0.7) - 3 * np.log(0.8)) / 4
    assert figure.original == pytest.approx(expected_original)
    assert figure.nll == pytest.approx(expected_new)
    assert figure.change == pytest.approx(expected_new / expected_original - 1)  # +15 %
    assert figure.temperature == 1.0 and not figure.within
    assert judge(new, original, y, NllRule(0.20, PROBS)).within
    assert judge(original, original, y, NllRule(0.0, PROBS)).within  # no change is within a 0 % limit


def test_judge_softmaxes_logits_and_skips_what_has_no_nll():
    y = np.array([0, 1])
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    figure = judge(logits, logits, y, NllRule(0.02, OutputKind.LOGITS))
    assert figure.nll == pytest.approx(np.log1p(np.exp(-2.0)))  # -log softmax: not the logits read as probabilities
    assert judge(np.ones((2, 1)), np.ones((2, 1)), np.array([0.5, 1.5]), NllRule(0.02, OutputKind.VALUES)) is None


def test_a_calibrating_run_credits_the_temperature_it_would_fold_by_its_cross_validated_nll():
    """An overconfident pruned model (0.999 on every prediction, 15 % of them wrong) against a calibrated original:
    +several hundred % as it is; the run folds a T > 1 after the search, so the try is judged on the NLL that
    temperature gives rows it was not fitted on."""
    original, y = _rows(400, 0.85, 0.85, 60)
    overconfident, _ = _rows(400, 0.999, 0.999, 60)
    plain = judge(overconfident, original, y, NllRule(0.02, PROBS))
    calibrated = judge(overconfident, original, y, NllRule(0.02, PROBS, calibrate=kept_temperature_nll))
    assert plain.change > 1.0 and plain.temperature == 1.0
    assert calibrated.temperature > 1.5  # softened
    assert calibrated.nll < plain.nll / 2
    assert calibrated.nll >= judge_fitted_in_sample(overconfident, y, calibrated.temperature) - 1e-9


def judge_fitted_in_sample(probs, y, temperature):
    """The NLL of the full-split T on the rows it was fitted on: the cross-validated figure is never below it."""
    from deploykit.uncertainty.temperature import fit_temperature, scale_probs

    t = fit_temperature(y, probs).temperature
    assert t == pytest.approx(temperature, rel=1e-6)
    p = scale_probs(probs, t)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())


def test_a_calibrating_run_keeps_t_1_when_the_split_is_too_small_to_fit_one():
    """40 validation rows (< MIN_ROWS_SOFTEN): the temperature step keeps T = 1, so the try is judged as it is."""
    original, y = _rows(40, 0.85, 0.85, 6)
    worse, _ = _rows(40, 0.99, 0.99, 6)
    figure = judge(worse, original, y, NllRule(0.02, PROBS, calibrate=kept_temperature_nll))
    assert figure.temperature == 1.0
    assert figure.nll == pytest.approx(judge(worse, original, y, NllRule(0.02, PROBS)).nll)
    assert not figure.within


def _try(accuracy_change: float, nll_within: bool | None, nll_change: float | None = None) -> SearchTry:
    change = Interval(accuracy_change, accuracy_change - 0.01, accuracy_change + 0.01)
    return SearchTry(
        0.9,
        {},
        0.9,
        0.9 + accuracy_change,
        accuracy_change,
        1000,
        ci95=change.as_list(),
        change=change,
        nll=None if nll_change is None else 0.3 * (1 + nll_change),
        nll_change=nll_change,
        nll_within=nll_within,
    )


def test_accept_rule_needs_both_the_budget_and_the_nll_limit():
    budget = Budget(Metric.ACCURACY, 0.01)
    assert accepted(_try(-0.005, None), budget)  # not judged on NLL: the budget alone decides
    assert accepted(_try(-0.005, True, 0.01), budget)
    assert not accepted(_try(-0.005, False, 0.05), budget)  # within one point, but +5 % NLL
    assert not accepted(_try(-0.02, True, 0.0), budget)  # NLL fine, two points lost


def test_the_note_says_whether_a_try_missed_on_accuracy_or_on_nll():
    budget, rule = Budget(Metric.ACCURACY, 0.01), NllRule(0.02, PROBS)
    nll_miss = miss_note(_try(-0.005, False, 0.147), budget, 0.9, rule)
    assert nll_miss.startswith("NLL: validation NLL") and "+14.7% vs the original" in nll_miss
    assert "limit +2% (max_nll_increase)" in nll_miss
    accuracy_miss = miss_note(_try(-0.02, False, 0.147), budget, 0.9, rule)
    assert accuracy_miss.startswith("accuracy: -2.00 pt") and "+14.7%" in accuracy_miss
    assert miss_note(_try(-0.02, None), budget, 0.9).startswith("accuracy: -2.00 pt")


def test_the_pipeline_rule_follows_the_run():
    """Held to the limit only for a classifier with validation on; calibrating when the temperature step runs."""
    from deploykit.backend import keras
    from deploykit.pipeline.config import OptimizeConfig
    from deploykit.pipeline.search_rule import search_rule

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    config = OptimizeConfig()

    def ctx(metric="accuracy", config=config):
        return SimpleNamespace(config=config, metric=SimpleNamespace(value=metric), kind=PROBS, data=SimpleNamespace())

    rule = search_rule(model, ctx())
    assert config.export.temperature  # on by default: the search judges tries as the temperature step leaves them
    assert rule == NllRule(config.validate.max_nll_increase, PROBS, calibrate=kept_temperature_nll)
    assert search_rule(model, ctx("rmse")) is None
    off = config.with_options(validate=False)
    assert search_rule(model, ctx(config=off)) is None
    no_t = config.with_options(temperature=False)
    assert search_rule(model, ctx(config=no_t)).calibrate is None


@pytest.mark.slow
def test_a_try_within_the_accuracy_budget_is_not_kept_when_its_nll_misses(trained_model, digits):
    """End to end on a real search: a budget every try meets (50 points) and an NLL limit none can (the NLL must
    fall by 90 %): nothing is kept, and each try's note says it missed on NLL, with its figure."""
    from deploykit.sparsity import PruneConfig, SearchConfig, search_sparsity

    lines: list[str] = []
    model, report = search_sparsity(
        trained_model,
        digits,
        0.5,
        config=SearchConfig(targets=(0.5,), prune_protected=False),
        prune_config=PruneConfig(epochs=2),
        progress=lines.append,
        nll=NllRule(-0.9, PROBS),
    )
    assert report.kept is None and model is trained_model
    (only,) = report.tries
    assert only.nll_within is False and only.nll_change > -0.9
    assert only.note.startswith("NLL: validation NLL")
    assert any("missed: NLL:" in line for line in lines)
