"""Selective prediction for regressors: a threshold on the 95% interval width, served as `abstain`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.core.contract import Measure
from deploykit.core.task import Task
from deploykit.errors import ConfigError, DataError, UsageError
from deploykit.uncertainty.selective import (
    SelectiveTarget,
    add_abstain,
    apply_regression_threshold,
    choose_regression_threshold,
    choose_threshold,
    read_selective,
    regression_risk_coverage,
    risk_coverage_plot,
)
from tests.uncertainty.support import run, session


def _heteroscedastic(n=2000, seed=0):
    """Targets whose noise grows with the stated std: the wide rows are the wrong ones."""
    rng = np.random.default_rng(seed)
    std = rng.uniform(0.1, 3.0, size=(n, 1))
    mean = rng.normal(size=(n, 1))
    return (mean + rng.normal(size=(n, 1)) * std)[:, 0], mean, 2 * 1.959964 * std[:, 0]


def test_target_rmse_keeps_the_most_rows_under_it():
    """The point rule (target_delta=None): the validation RMSE alone decides."""
    y, mean, width = _heteroscedastic()
    chosen = choose_regression_threshold(
        y, mean, width, SelectiveTarget(target_accuracy=None, target_rmse=1.0, target_delta=None)
    )
    kept = width <= chosen.threshold
    assert chosen.measure is Measure.INTERVAL_WIDTH and 0.2 < chosen.coverage < 0.9
    assert np.sqrt(((y - mean[:, 0])[kept] ** 2).mean()) <= 1.0 and chosen.rmse <= 1.0
    one_more = np.sort(width)[kept.sum()]  # the next row would break the target
    assert np.sqrt(((y - mean[:, 0])[width <= one_more] ** 2).mean()) > 1.0 - 0.01
    assert np.isnan(chosen.accuracy)
    test = apply_regression_threshold(y, mean, width, chosen.threshold)
    assert test.coverage == chosen.coverage and test.rmse == pytest.approx(chosen.rmse)
    coverage, risk = regression_risk_coverage(y, mean, width)
    assert coverage[-1] == 1.0 and risk[-1] == pytest.approx(np.sqrt(((y - mean[:, 0]) ** 2).mean()))
    assert risk[len(risk) // 5] < risk[-1]  # the narrow intervals are the accurate rows


def test_target_coverage_for_a_regressor():
    y, mean, width = _heteroscedastic()
    chosen = choose_regression_threshold(y, mean, width, SelectiveTarget(target_accuracy=None, target_coverage=0.8))
    assert chosen.coverage == pytest.approx(0.8, abs=1e-3)
    stored = json.loads(chosen.metadata_value())
    assert (
        stored["measure"] == "interval_width" and stored["target_coverage"] == 0.8 and "target_accuracy" not in stored
    )


def test_targets_belong_to_their_task():
    y, mean, width = _heteroscedastic(50)
    with pytest.raises(UsageError, match="target_accuracy is a classification target"):
        choose_regression_threshold(y, mean, width, SelectiveTarget())
    with pytest.raises(UsageError, match="target_rmse is a regression target"):
        choose_threshold(
            np.zeros(3, np.int64),
            np.zeros(3, np.int64),
            np.ones(3),
            Measure.ENTROPY,
            SelectiveTarget(target_accuracy=None, target_rmse=1.0),
        )
    with pytest.raises(ConfigError, match="exactly one"):
        SelectiveTarget(target_rmse=1.0)  # target_accuracy keeps its default
    with pytest.raises(ConfigError, match="target_rmse must be a number > 0"):
        SelectiveTarget(target_accuracy=None, target_rmse=0)
    with pytest.raises(DataError, match="one per row"):
        choose_regression_threshold(y, mean, width[:10], SelectiveTarget(target_accuracy=None, target_rmse=1.0))


@pytest.mark.parametrize("opset", [13, 18])
def test_abstain_output_of_a_regression_mc_model(regression_model, opset, tmp_path):
    from deploykit.core.chain import to_chain
    from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph

    proto = build_mc_graph(to_chain(regression_model), MCConfig(samples=30, seed=1, task=Task.REGRESSION), opset=opset)
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    first = run(session(proto), x)
    width = 2 * 1.959964 * first["std"].astype(np.float64).mean(axis=1)
    chosen = choose_regression_threshold(
        np.zeros((64, 2)), first["mean"], width, SelectiveTarget(target_accuracy=None, target_coverage=0.5)
    )
    add_abstain(proto, chosen)
    out = run(session(proto), x)  # seeded: a new session's first call repeats
    assert np.array_equal(out["std"], first["std"]) and out["abstain"].shape == (64,)
    assert np.array_equal(out["abstain"], width > chosen.threshold) and 0 < out["abstain"].sum() < 64
    assert read_selective(proto)["measure"] == "interval_width"


def test_a_classifier_measure_on_a_regressor_is_refused(regression_model):
    from deploykit.core.chain import to_chain
    from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph

    proto = build_mc_graph(to_chain(regression_model), MCConfig(task=Task.REGRESSION))
    chosen = choose_threshold(
        np.zeros(3, np.int64),
        np.zeros(3, np.int64),
        np.ones(3),
        Measure.ENTROPY,
        SelectiveTarget(target_accuracy=None, target_coverage=0.5),
    )
    with pytest.raises(UsageError, match="this model takes interval_width"):
        add_abstain(proto, chosen)


def test_risk_coverage_plot_of_a_regressor(tmp_path):
    y, mean, width = _heteroscedastic(300)
    path = risk_coverage_plot({"MC": regression_risk_coverage(y, mean, width)}, tmp_path / "rc.png", target_rmse=1.0)
    assert path.read_bytes()[:4] == b"\x89PNG"
