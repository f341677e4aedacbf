"""The MC graph's head for logits classifiers and regressors: softmax per sample, mean / std per target."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.chain import to_chain
from deploykit.core.contract import OUTPUT_NAMES, REGRESSION_OUTPUT_NAMES, SAMPLE_PREDICTIONS_OUTPUT, SAMPLES_OUTPUT
from deploykit.core.task import Task
from deploykit.errors import ConfigError, UsageError
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph, mc_task
from tests.uncertainty.support import run, session, zero_dropout

OPSETS = tuple(range(13, 19))  # what the MC graph supports


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_logits_head_applies_the_softmax_per_sample(logits_model):
    x = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    out = run(session(build_mc_graph(to_chain(logits_model), MCConfig(samples=40, include_samples=True))), x)
    assert set(out) == {*OUTPUT_NAMES, SAMPLES_OUTPUT}
    p = out[SAMPLES_OUTPUT].astype(np.float64)
    assert p.shape == (40, 16, 3) and np.abs(p.sum(axis=2) - 1).max() <= 1e-5  # probabilities per sample
    assert np.abs(out["mean"] - p.mean(axis=0)).max() <= 1e-6
    assert out["std"].max() > 0.01  # dropout varies the samples


@pytest.mark.parametrize("opset", OPSETS)
def test_logits_rate_zero_equals_keras_softmax(logits_model, opset):
    x = np.random.default_rng(1).normal(size=(32, 8)).astype(np.float32)
    out = run(session(build_mc_graph(zero_dropout(to_chain(logits_model)), MCConfig(samples=3), opset=opset)), x)
    want = _softmax(np.asarray(logits_model(x, training=False), np.float64))
    assert np.abs(out["mean"] - want).max() <= 1e-5
    assert out["std"].max() <= 1e-5 and out["mutual_information"].max() <= 1e-5
    assert np.array_equal(out["predicted_class"], want.argmax(axis=1))


@pytest.mark.parametrize("opset", OPSETS)
def test_regression_rate_zero_equals_keras(regression_model, opset):
    x = np.random.default_rng(2).normal(size=(32, 8)).astype(np.float32)
    config = MCConfig(samples=3, task=Task.REGRESSION, include_samples=True)
    out = run(session(build_mc_graph(zero_dropout(to_chain(regression_model)), config, opset=opset)), x)
    assert set(out) == {*REGRESSION_OUTPUT_NAMES, SAMPLE_PREDICTIONS_OUTPUT}
    want = np.asarray(regression_model(x, training=False), np.float64)
    assert out["mean"].shape == want.shape == (32, 2) and out[SAMPLE_PREDICTIONS_OUTPUT].shape == (3, 32, 2)
    assert np.abs(out["mean"] - want).max() <= 1e-5
    assert out["std"].max() <= 1e-5


def test_regression_with_dropout_spreads_the_samples(regression_model):
    x = np.random.default_rng(3).normal(size=(16, 8)).astype(np.float32)
    config = MCConfig(samples=50, task=Task.REGRESSION, include_samples=True)
    out = run(session(build_mc_graph(to_chain(regression_model), config)), x)
    s = out[SAMPLE_PREDICTIONS_OUTPUT].astype(np.float64)
    assert out["std"].min() > 0
    assert np.abs(out["mean"] - s.mean(axis=0)).max() <= 1e-5
    assert np.abs(out["std"] - s.std(axis=0)).max() <= 1e-5  # population std over the samples
    assert run(session(build_mc_graph(to_chain(regression_model), config)), x, samples=7)[
        SAMPLE_PREDICTIONS_OUTPUT
    ].shape == (7, 16, 2)


def test_task_from_the_model_and_from_the_config(logits_model, regression_model, mc_bn_model):
    from deploykit.core.graph import graph_from_model
    from deploykit.core.task import OutputKind

    bn, logits, regression = (graph_from_model(m) for m in (mc_bn_model, logits_model, regression_model))
    assert mc_task(bn) == (Task.CLASSIFICATION, OutputKind.PROBABILITIES)
    assert mc_task(logits) == (Task.CLASSIFICATION, OutputKind.LOGITS)
    assert mc_task(logits, Task.REGRESSION) == (Task.REGRESSION, OutputKind.VALUES)
    assert mc_task(regression, Task.REGRESSION) == (Task.REGRESSION, OutputKind.VALUES)
    with pytest.raises(UsageError, match="softmax"):
        mc_task(bn, Task.REGRESSION)


def test_config_task_is_typed_and_round_trips():
    config = MCConfig(samples=5, task="Regression")
    assert config.task is Task.REGRESSION
    assert MCConfig.from_dict(config.to_dict()) == config and config.to_dict()["task"] == "regression"
    assert MCConfig().task is None and MCConfig.from_dict(MCConfig().to_dict()) == MCConfig()
    with pytest.raises(ConfigError, match="task"):
        MCConfig(task="ranking")


def test_temperature_divides_the_logits_of_each_sample(logits_model):
    from deploykit.uncertainty.temperature import Placement, TemperatureFit, apply_mc_temperature

    x = np.random.default_rng(4).normal(size=(16, 8)).astype(np.float32)
    proto = build_mc_graph(zero_dropout(to_chain(logits_model)), MCConfig(samples=2))
    apply_mc_temperature(proto, TemperatureFit(2.5, Placement.PER_SAMPLE, 1.0, 0.9, 10))
    want = _softmax(np.asarray(logits_model(x, training=False), np.float64) / 2.5)
    assert np.abs(run(session(proto), x)["mean"] - want).max() <= 1e-5


def test_a_regression_graph_takes_no_temperature(regression_model):
    from deploykit.uncertainty.temperature import Placement, TemperatureFit, apply_mc_temperature

    proto = build_mc_graph(to_chain(regression_model), MCConfig(task=Task.REGRESSION))
    with pytest.raises(UsageError, match="predictive_entropy"):
        apply_mc_temperature(proto, TemperatureFit(2.0, Placement.MEAN, 1.0, 0.9, 10))


def test_writing_a_temperature_into_a_regression_file_is_refused(regression_model, tmp_path):
    from deploykit.uncertainty import export_mc_onnx
    from deploykit.uncertainty.temperature import Placement, TemperatureFit, write_with_temperature

    export_mc_onnx(regression_model, tmp_path / "r.onnx", config=MCConfig(task=Task.REGRESSION))
    with pytest.raises(UsageError, match="regression model.*fit_std_scale"):
        write_with_temperature(
            tmp_path / "r.onnx", tmp_path / "t.onnx", TemperatureFit(2.0, Placement.MEAN, 1.0, 0.9, 10)
        )
    assert not (tmp_path / "t.onnx").exists()
