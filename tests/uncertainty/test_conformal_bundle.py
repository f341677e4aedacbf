"""The conformal step of the bundles: a regressor's intervals, an ensemble's sets, a deterministic model's sets,
each in the graph, returned by UncertaintyPredictor, and equal to the numpy rule on the same call's outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deploykit.core.task import Task
from deploykit.uncertainty.conformal import Conformal, ConformalConfig, ConformalMethod, intervals, prediction_sets
from deploykit.uncertainty.conformal_graph import read_conformal
from tests.uncertainty.support import export_as_task

pytestmark = pytest.mark.slow  # exports and runs MC models and ensembles


def _stored(path) -> Conformal:
    meta = read_conformal(onnx.load(str(path)))
    return Conformal(
        ConformalMethod(meta["method"]),
        meta["alpha"],
        meta["n"],
        meta["threshold"],
        meta["by_class"],
        meta.get("lambda", 0.0),
        meta.get("k_reg", 0),
    )


def test_regression_mc_bundle_adds_normalized_intervals(tmp_path, diabetes, diabetes_model):
    from deploykit.uncertainty import MCConfig, UncertaintyPredictor
    from deploykit.uncertainty.bundle import mc_bundle

    path = tmp_path / "m.onnx"
    bundle = mc_bundle(
        diabetes_model, diabetes, path, MCConfig(samples=20, seed=2), conformal=0.9
    )  # the coverage alone
    report = bundle.comparison.conformal
    assert report.calibration.method is ConformalMethod.NORMALIZED and report.calibration.count == len(diabetes.y_val)
    assert 0.7 <= report.test.coverage <= 1.0 and report.test.mean_width > 0
    result = UncertaintyPredictor(path).predict(diabetes.x_test)
    assert result.lower.shape == result.upper.shape == (len(diabetes.x_test), 1) and result.prediction_set is None
    lower, upper = intervals(result.mean, result.std, _stored(path))
    np.testing.assert_allclose(result.lower, lower, rtol=1e-5, atol=1e-3)  # the same call's mean and std
    np.testing.assert_allclose(result.upper, upper, rtol=1e-5, atol=1e-3)
    assert "## Conformal intervals" in bundle.comparison.to_markdown()
    from deploykit.errors import UsageError

    with pytest.raises(UsageError, match="conformal_by_class applies to classifiers"):
        mc_bundle(
            diabetes_model,
            diabetes,
            tmp_path / "x.onnx",
            MCConfig(samples=5),
            conformal=ConformalConfig(0.9, by_class=True),
        )
    assert not (tmp_path / "x.onnx").exists()


def test_ensemble_bundle_adds_prediction_sets_per_class(tmp_path, digits, random_bn_model):
    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.bundle import ensemble_bundle

    members = [
        export_as_task(random_bn_model(30 + k, data=digits), tmp_path / f"m{k}.onnx", Task.CLASSIFICATION, 17)
        for k in range(2)
    ]
    config = ConformalConfig(0.8, ConformalMethod.LAC, by_class=True)
    bundle = ensemble_bundle(members, digits, tmp_path / "ensemble.onnx", conformal=config)
    report = bundle.comparison.conformal
    assert report.calibration.by_class and len(report.calibration.threshold) == 10
    assert len(report.test.per_class) == 10 and sum(report.calibration.class_counts) == len(digits.y_val)
    result = UncertaintyPredictor(bundle.export.path).predict(digits.x_test)
    assert np.array_equal(result.prediction_set, prediction_sets(result.mean, _stored(bundle.export.path)))
    assert np.array_equal(result.set_size, result.prediction_set.sum(1))
    assert result.prediction_set[np.arange(len(digits.y_test)), digits.y_test].mean() == pytest.approx(
        report.test.coverage
    )


def test_deterministic_model_gets_sets_after_its_temperature(tmp_path, digits, mc_plain_model):
    from deploykit.export import export_onnx
    from deploykit.uncertainty.conformal_step import deterministic_conformal
    from tests.uncertainty.support import run, session

    path = tmp_path / "model.onnx"
    export_onnx(mc_plain_model, path)
    report = deterministic_conformal(path, ConformalConfig(0.9, ConformalMethod.APS), digits)
    out = run(session(path), digits.x_test)
    assert np.array_equal(out["prediction_set"], prediction_sets(out["probabilities"], _stored(path)))
    assert out["prediction_set"][np.arange(len(digits.y_test)), digits.y_test].mean() == pytest.approx(
        report.test.coverage
    )
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["probabilities", "prediction_set", "set_size"]
