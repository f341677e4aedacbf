"""AUROC and FPR at 95% TPR against hand-checked cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import DataError


def test_auroc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    from deploykit.uncertainty.ood import auroc

    rng = np.random.default_rng(0)
    neg = np.round(rng.normal(0, 1, 300), 1)
    pos = np.round(rng.normal(0.8, 1, 200), 1)  # rounded: many ties
    want = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[neg, pos])
    assert auroc(neg, pos) == pytest.approx(want, abs=1e-12)


def test_separated_and_reversed_scores():
    from deploykit.uncertainty.ood import auroc, fpr_at_tpr

    assert auroc([0.1, 0.2], [0.5, 0.9]) == 1.0
    assert auroc([0.5, 0.9], [0.1, 0.2]) == 0.0
    assert fpr_at_tpr([0.1, 0.2], [0.5, 0.9]) == 0.0
    assert fpr_at_tpr([0.5, 0.9], [0.1, 0.2]) == 1.0


def test_fpr_at_95_tpr_counts_in_distribution_rows_above_the_threshold():
    from deploykit.uncertainty.ood import fpr_at_tpr

    pos = np.arange(100, dtype=float)  # 95% of them are >= 5
    neg = np.array([4.0, 5.0, 6.0, 50.0])
    assert fpr_at_tpr(neg, pos) == 0.75


def test_report_and_error_auroc():
    from deploykit.uncertainty.measures import Measure, uncertainties
    from deploykit.uncertainty.ood import error_auroc, ood_report

    sure = np.tile([[0.97, 0.01, 0.01, 0.01]], (20, 1))
    unsure = np.tile([[0.4, 0.3, 0.2, 0.1]], (20, 1))
    rows = ood_report(uncertainties(sure), uncertainties(unsure))
    assert {r.measure for r in rows} == {Measure.MAX_PROB, Measure.ENTROPY}
    assert all(r.auroc == 1.0 and r.fpr_at_95_tpr == 0.0 for r in rows)
    assert error_auroc([0, 0, 1], [0, 0, 0], [0.1, 0.2, 0.9]) == 1.0


def test_empty_or_nan_scores_are_refused():
    from deploykit.uncertainty.ood import auroc

    with pytest.raises(DataError, match="finite"):
        auroc([], [1.0])
    with pytest.raises(DataError, match="finite"):
        auroc([np.nan], [1.0])
