"""The structured step decides as the rest of the run does (issue 23): a share is kept only when it is within the
step's share of the accuracy budget AND its validation NLL is within ``max_nll_increase`` of the original's, by the
magnitude search's rule (one ``NllRule``, from ``search_rule``). Before, a share within one point on validation
could be kept and then have every file it shipped rejected by the NLL budget on test."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from deploykit.core.evaluate import Budget, Metric
from deploykit.core.task import OutputKind, Task
from deploykit.pipeline.structured_step import Held, decide, held
from deploykit.sparsity.nll_rule import NllRule

PROBS = OutputKind.PROBABILITIES


def _probs(y: np.ndarray, right: float, wrong_rows: int, confident: float) -> np.ndarray:
    """3-class probabilities: ``right`` on the label except ``wrong_rows`` rows, which put ``confident`` on the next
    class."""
    n = len(y)
    p = np.full((n, 3), (1 - right) / 2)
    p[np.arange(n), y] = right
    wrong = np.arange(wrong_rows)
    p[wrong] = (1 - confident) / 2
    p[wrong, (y[wrong] + 1) % 3] = confident
    return p


def _ctx(y: np.ndarray, metric: Metric = Metric.ACCURACY, share: float = 1.0):
    return SimpleNamespace(
        data=SimpleNamespace(y_val=y),
        kind=PROBS,
        metric=metric,
        budget=Budget(metric, 0.01),
        config=SimpleNamespace(structured=SimpleNamespace(budget_share=share)),
    )


Y = np.random.default_rng(0).integers(0, 3, 600)
ORIGINAL = _probs(Y, 0.85, 90, 0.85)  # 85 % right, calibrated


RULE = NllRule(0.02, PROBS)  # the default max_nll_increase, no temperature


def _held(rule: NllRule | None = RULE) -> Held:
    return Held(Budget(Metric.ACCURACY, 0.01), 0.85, ORIGINAL, rule, None if rule is None else ORIGINAL)


def test_a_try_within_one_point_but_above_the_nll_limit_is_a_miss_and_the_note_says_nll():
    """The same predictions as the original (0.0 pt) made overconfident (0.99 on every row, 15 % of them wrong):
    within the accuracy budget, far beyond +2 % NLL."""
    overconfident = _probs(Y, 0.99, 90, 0.99)
    val, nll, kept, note = decide(overconfident, _held(), _ctx(Y))
    assert val.within and val.change == 0.0  # the accuracy budget alone would keep it
    assert nll is not None and nll.change > 0.02 and not nll.within
    assert not kept
    assert note.startswith("NLL: validation NLL") and "limit +2% (max_nll_increase)" in note
    assert f"{100 * nll.change:+.1f}% vs the original" in note
    assert "structured budget: 100% of accuracy drop <= 1 pt" in note  # its accuracy figure follows


def test_a_try_within_both_is_kept_and_an_accuracy_miss_says_accuracy_with_its_nll():
    same = ORIGINAL.copy()
    val, nll, kept, note = decide(same, _held(), _ctx(Y))
    assert kept and note == "" and nll.change == pytest.approx(0.0)
    worse = _probs(Y, 0.85, 150, 0.85)  # 10 points lost, as calibrated as the original
    val, nll, kept, note = decide(worse, _held(), _ctx(Y))
    assert not val.within and not kept
    assert note.startswith("accuracy: validation -10.00 pt") and "validation NLL" in note


def test_without_an_nll_rule_the_try_is_decided_on_its_metric_alone():
    """A run whose files are not held to max_nll_increase (a regressor, validation off): as before."""
    overconfident = _probs(Y, 0.99, 90, 0.99)
    val, nll, kept, note = decide(overconfident, _held(None), _ctx(Y))
    assert nll is None and kept and note == ""


def test_the_step_holds_its_tries_to_the_magnitude_search_rule_and_its_share_of_the_budget():
    """``held`` takes the run's one NLL rule (``search_rule``: the limit, the kind, the temperature the run would
    fold) and the step's share of the accuracy budget; a regressor's run has no NLL rule."""
    from deploykit.backend import keras
    from deploykit.pipeline.config import OptimizeConfig
    from deploykit.pipeline.search_rule import search_rule

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(1).normal(size=(30, 4)).astype("float32")
    config = OptimizeConfig().with_options(structured_budget_share=0.5)
    ctx = SimpleNamespace(
        config=config,
        metric=Metric.ACCURACY,
        kind=PROBS,
        budget=Budget(Metric.ACCURACY, 0.01),
        original=model,
        reference=None,
        data=SimpleNamespace(x_val=x, y_val=Y[:30], x_test=x, task=Task.CLASSIFICATION),
    )
    rule = held(model, ctx)
    assert rule.nll == search_rule(model, ctx) and rule.nll.limit == config.validate.max_nll_increase
    assert rule.budget == Budget(Metric.ACCURACY, 0.005)
    assert rule.raw.shape == (30, 3)
    regression = held(model, SimpleNamespace(**{**vars(ctx), "metric": Metric.RMSE}))
    assert regression.nll is None and regression.raw is None
