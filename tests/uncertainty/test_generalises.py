"""Calibration only when it generalises: cross-validated on the validation split, else the identity."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.uncertainty.generalises import (
    MIN_ROWS,
    MIN_ROWS_SOFTEN,
    check_std_scale,
    check_temperature,
)
from deploykit.uncertainty.temperature import scale_probs


def _classifier(rows: int, temperature: float, seed: int = 0):
    """Labels and probabilities of a model calibrated at T = 1, then tempered by 1 / ``temperature`` (over- or
    under-confident by that factor)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(rows, 5))
    calibrated = scale_probs(np.exp(logits), 1.0)
    y = np.array([rng.choice(5, p=p) for p in calibrated])
    return y, scale_probs(calibrated, 1 / temperature)


def test_an_overconfident_model_keeps_its_fitted_temperature():
    y, probs = _classifier(1000, temperature=3.0)  # three times too sharp
    decision = check_temperature(y, probs)
    assert decision.kept and decision.value == pytest.approx(3.0, rel=0.2)
    assert decision.cv_nll_fitted < decision.cv_nll_identity
    assert decision.line().startswith("T = ") and "kept" in decision.line()


def test_a_calibrated_model_keeps_t_1_and_says_why():
    y, probs = _classifier(1000, temperature=1.0)
    decision = check_temperature(y, probs)
    assert not decision.kept and decision.value == 1.0 and decision.fitted is not None
    assert "does not generalise" in decision.line() and "T = 1" in decision.line()


def test_too_few_rows_keep_t_1():
    y, probs = _classifier(MIN_ROWS - 19, temperature=1 / 3)  # the tabular case: 81 rows asking to sharpen
    decision = check_temperature(y, probs)
    assert not decision.kept and decision.value == 1.0 and decision.fitted < 1
    assert f"{MIN_ROWS - 19} validation rows < {MIN_ROWS}: too few to sharpen" in decision.line()
    y, probs = _classifier(MIN_ROWS_SOFTEN - 1, temperature=3.0)
    assert "too few to fit one" in check_temperature(y, probs).line()
    y, probs = _classifier(MIN_ROWS - 19, temperature=3.0)  # softening an overconfident model: fewer rows will do
    assert check_temperature(y, probs).kept


def test_the_std_scale_is_checked_the_same_way():
    rng = np.random.default_rng(0)
    y = rng.normal(size=800)
    mean = y + rng.normal(scale=1.0, size=800)
    too_small = check_std_scale(y, mean, np.full(800, 0.25))  # stds four times too small
    assert (
        too_small.kept and too_small.value == pytest.approx(4.0, rel=0.15) and too_small.line().startswith("std x = ")
    )
    right = check_std_scale(y, mean, np.ones(800))
    assert not right.kept and right.value == 1.0


def _accurate_but_underconfident(rows: int, mistakes: int, seed: int = 0):
    """Labels and soft probabilities (the label's about 0.5 of 5 classes) that are right on all but ``mistakes``
    rows: a validation split that asks for a much sharper temperature."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, rows)
    logits = rng.normal(scale=0.3, size=(rows, 5))
    logits[np.arange(rows), y] += 1.5
    wrong = rng.choice(rows, mistakes, replace=False)
    logits[wrong, (y[wrong] + 1) % 5] += 3.0  # confidently wrong there
    return y, scale_probs(np.exp(logits), 1.0)


def test_a_split_with_few_mistakes_does_not_sharpen():
    """The shipped digits model's MC file: 7 mistakes in 270 validation rows, T = 0.43 passed the folds, test NLL
    +43 %. Sharpening is paid for on the mistakes, so a handful of them cannot tell what it costs."""
    from deploykit.uncertainty.generalises import MIN_MISTAKES, check_mc_temperature
    from deploykit.uncertainty.temperature import Placement

    y, probs = _accurate_but_underconfident(270, mistakes=4)
    decision = check_temperature(y, probs)
    assert not decision.kept and decision.value == 1.0 and decision.fitted < 1
    assert f"4 misclassified validation rows < {MIN_MISTAKES}" in decision.line()
    samples = np.stack([probs, probs])  # two MC samples [T, N, C]: their mean has the same 4 mistakes
    mc = check_mc_temperature(y, samples, Placement.MEAN)
    assert not mc.kept and "4 misclassified validation rows" in mc.line()
    y, probs = _accurate_but_underconfident(270, mistakes=MIN_MISTAKES)  # enough mistakes: the folds decide
    assert "misclassified" not in check_temperature(y, probs).line()


def test_an_underconfident_model_with_mistakes_enough_is_still_sharpened():
    y, probs = _classifier(1000, temperature=1 / 3)  # three times too soft, about half its rows wrong
    decision = check_temperature(y, probs)
    assert decision.kept and decision.value == pytest.approx(1 / 3, rel=0.2)
