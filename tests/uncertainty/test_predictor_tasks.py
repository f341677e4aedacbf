"""``UncertaintyPredictor`` on regression and logits MC models."""

from __future__ import annotations

import numpy as np

from deploykit.core.task import Task
from deploykit.uncertainty.mc_graph import MCConfig


def test_regression_mc_model(tmp_path, regression_model):
    from deploykit.uncertainty import UncertaintyPredictor, export_mc_onnx

    path = tmp_path / "reg.onnx"
    export_mc_onnx(regression_model, path, config=MCConfig(samples=12, include_samples=True, task=Task.REGRESSION))
    x = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    result = UncertaintyPredictor(path).predict(x, batch_size=4)
    assert result.task is Task.REGRESSION and result.mean.shape == result.std.shape == (10, 2)
    assert result.sample_predictions.shape == (12, 10, 2) and result.sample_probabilities is None
    assert result.predictive_entropy is None and result.predicted_class is None
    assert np.abs(result.mean - result.sample_predictions.mean(0)).max() <= 1e-5


def test_logits_mc_model(tmp_path, logits_model):
    from deploykit.uncertainty import UncertaintyPredictor, export_mc_onnx

    path = tmp_path / "logits.onnx"
    record = export_mc_onnx(logits_model, path, samples=12)
    result = UncertaintyPredictor(path).predict(np.zeros((3, 8), np.float32))
    assert record.num_classes == 3 and result.task is Task.CLASSIFICATION
    assert np.allclose(result.mean.sum(1), 1, atol=1e-5) and result.predicted_class.shape == (3,)
