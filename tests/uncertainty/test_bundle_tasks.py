"""``mc_bundle`` for a regression Dataset and for a logits classifier."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from deploykit.core.task import Task
from deploykit.uncertainty.bundle import mc_bundle
from deploykit.uncertainty.compare import RegressionComparison
from deploykit.uncertainty.mc_graph import MCConfig
from deploykit.uncertainty.selective import SelectiveTarget


def test_regression_bundle_scales_the_std_and_abstains(tmp_path, diabetes, diabetes_model):
    from deploykit.uncertainty.predictor import UncertaintyPredictor
    from deploykit.uncertainty.regression import read_std_scale, regression_metrics
    from deploykit.uncertainty.selective import read_selective

    path = tmp_path / "model_mc.onnx"
    said = []
    bundle = mc_bundle(
        diabetes_model,
        diabetes,
        path,
        MCConfig(samples=30, seed=0),
        target=SelectiveTarget(target_accuracy=None, target_coverage=0.8),
        say=said.append,
    )
    report = bundle.comparison
    assert isinstance(report, RegressionComparison) and bundle.export.task is Task.REGRESSION
    assert bundle.predicted_class is None and bundle.prediction.shape == (len(diabetes.x_test), 1)
    fit = report.std_scale.fit
    assert fit.nll_after <= fit.nll_before and fit.std_scale > 0
    assert report.std_scale.after.coverage_95 != report.std_scale.before.coverage_95 or fit.std_scale == 1
    assert 0 <= report.mc.coverage_95 <= 1 and report.mc.coverage_90 <= report.mc.coverage_95
    assert abs(report.selective.test.coverage - 0.8) < 0.2 and report.selective.chosen.measure.value == "interval_width"
    proto = onnx.load(str(path))
    assert read_std_scale(proto)["std_scale"] == pytest.approx(fit.std_scale)
    assert read_selective(proto)["threshold"] == report.selective.chosen.threshold
    assert [o.name for o in proto.graph.output] == ["mean", "std", "abstain"]
    mc = UncertaintyPredictor(path).predict(diabetes.x_test)
    again = regression_metrics(diabetes.y_test, mc.mean, mc.std)
    assert abs(again.rmse - report.mc.rmse) < 0.2 * report.mc.rmse  # a fresh draw of the same model
    markdown = report.to_markdown()
    assert "coverage of the central 95% interval" in markdown and "Variance calibration" in markdown
    assert "Selective prediction (target coverage 80.00%)" in markdown and "RMSE of kept" in markdown
    assert any("std x" in line for line in said)
    json.dumps(report.to_dict())  # the record is JSON-ready


def test_regression_bundle_without_std_scale(tmp_path, diabetes, diabetes_model):
    from deploykit.uncertainty.regression import read_std_scale

    bundle = mc_bundle(diabetes_model, diabetes, tmp_path / "m.onnx", MCConfig(samples=10), temperature=False)
    assert bundle.comparison.std_scale is None and bundle.comparison.selective is None
    assert read_std_scale(onnx.load(str(tmp_path / "m.onnx"))) is None


@pytest.mark.slow  # two whole bundles (export, temperature, figures); the fast loop has the logits one via `mc`
def test_logits_classifier_bundle(tmp_path, digits):
    from deploykit.backend import keras, set_seed
    from deploykit.uncertainty.predictor import UncertaintyPredictor

    set_seed(7)
    model = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10),
        ]
    )
    bundle = mc_bundle(
        model,
        digits,
        tmp_path / "m.onnx",
        MCConfig(samples=10, seed=0),
        target=SelectiveTarget(target_accuracy=None, target_coverage=0.5),
    )
    report = bundle.comparison
    assert bundle.export.output_kind.value == "logits" and report.temperature is not None
    p = UncertaintyPredictor(tmp_path / "m.onnx").predict(digits.x_test[:5])
    assert np.allclose(p.mean.sum(axis=1), 1, atol=1e-5)  # probabilities, not logits
    det = np.asarray(model(digits.x_test, training=False), np.float64)
    assert report.deterministic.accuracy == pytest.approx(np.mean(det.argmax(1) == digits.y_test))
    assert abs(report.selective.test.coverage - 0.5) < 0.2
    given = mc_bundle(model, digits, tmp_path / "g.onnx", MCConfig(samples=5), temperature=False, deterministic=det)
    assert given.comparison.deterministic.nll == pytest.approx(
        report.deterministic.nll
    )  # raw logits, as optimize passes


def test_regression_bundle_with_target_rmse_and_ood(tmp_path, diabetes, diabetes_model):
    from deploykit.uncertainty.selective import read_selective

    far = diabetes.x_test * 8  # inputs far outside the standardized training range
    val = np.asarray(diabetes_model(diabetes.x_val, training=False), np.float64)[:, 0]
    target = round(0.9 * float(np.sqrt(((val - diabetes.y_val) ** 2).mean())))  # below the RMSE of all rows
    bundle = mc_bundle(
        diabetes_model,
        diabetes,
        tmp_path / "m.onnx",
        MCConfig(samples=30, seed=1),
        target=SelectiveTarget(target_accuracy=None, target_rmse=float(target), target_delta=None),
        ood=far,
    )
    report = bundle.comparison
    chosen = report.selective.chosen
    assert 0 < chosen.coverage < 1 and chosen.rmse <= target  # some rows kept, the target met on them
    stored = read_selective(onnx.load(str(tmp_path / "m.onnx")))
    assert stored["target_rmse"] == target and stored["validation_rmse"] == chosen.rmse
    [row] = report.ood
    assert row.measure.value == "interval_width" and row.auroc > 0.5  # wider intervals far from the data
    markdown = report.to_markdown()
    assert f"target RMSE {target}" in markdown and "Out-of-distribution detection" in markdown


def test_a_classifier_target_on_regression_data_is_refused(tmp_path, diabetes, diabetes_model):
    from deploykit.errors import UsageError

    with pytest.raises(UsageError, match="target_accuracy is a classification target"):
        mc_bundle(diabetes_model, diabetes, tmp_path / "m.onnx", MCConfig(samples=5), target=SelectiveTarget())
    assert list(tmp_path.iterdir()) == []  # refused before any work
