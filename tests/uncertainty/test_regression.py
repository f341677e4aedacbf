"""Regression uncertainty metrics and the std scale (variance calibration) stored in the graph."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from deploykit.core.task import Task
from deploykit.errors import DataError, UsageError
from deploykit.uncertainty.regression import (
    STD_FLOOR,
    apply_std_scale,
    fit_std_scale,
    gaussian_nll,
    interval_width,
    read_std_scale,
    regression_metrics,
)
from tests.uncertainty.support import run, session


def _gaussian(n=20000, k=2, sigma=2.0, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, k)) * 10
    return mean + rng.normal(size=(n, k)) * sigma, mean, np.full((n, k), sigma)


def test_a_calibrated_gaussian_covers_90_and_95_percent():
    y, mean, std = _gaussian()
    r = regression_metrics(y, mean, std)
    assert abs(r.coverage_90 - 0.90) < 0.01 and abs(r.coverage_95 - 0.95) < 0.01
    assert abs(r.rmse - 2.0) < 0.05 and abs(r.mae - 2.0 * math.sqrt(2 / math.pi)) < 0.05
    assert abs(r.nll - (0.5 * math.log(2 * math.pi * 4) + 0.5)) < 0.02  # entropy of N(0, 4)
    assert r.width_95 == pytest.approx(2 * 1.959964 * 2.0, rel=1e-5) and r.count == 20000 and r.targets == 2
    over = regression_metrics(y, mean, std / 2)  # over-confident: intervals too narrow
    assert over.coverage_95 < 0.75 and over.nll > r.nll


def test_nll_floors_the_std():
    y, mean = np.array([1.0, 2.0]), np.array([1.0, 2.5])
    value = gaussian_nll(y, mean, np.zeros(2))
    assert math.isfinite(value) and value == pytest.approx(gaussian_nll(y, mean, np.full(2, STD_FLOOR)))


def test_std_scale_minimizes_the_nll():
    y, mean, std = _gaussian(sigma=3.0)
    fit = fit_std_scale(y, mean, std / 3)  # told std 1, truly 3
    assert fit.std_scale == pytest.approx(3.0, rel=0.02) and fit.nll_after < fit.nll_before
    for other in (fit.std_scale * 0.95, fit.std_scale * 1.05):
        assert gaussian_nll(y, mean, std / 3 * other) > fit.nll_after
    assert fit.nll_after == pytest.approx(gaussian_nll(y, mean, std / 3 * fit.std_scale))


def test_bad_shapes_are_one_data_error():
    with pytest.raises(DataError, match="one shape"):
        regression_metrics(np.zeros(3), np.zeros((4, 1)), np.ones((4, 1)))
    with pytest.raises(DataError, match="std must have"):
        regression_metrics(np.zeros(3), np.zeros(3), np.ones(4))
    with pytest.raises(DataError, match="finite"):
        regression_metrics(np.array([np.nan]), np.zeros(1), np.ones(1))


def test_interval_width_averages_the_targets():
    assert np.allclose(interval_width(np.array([[1.0, 3.0]])), [2 * 1.959964 * 2.0])


def test_std_scale_in_the_graph(regression_model):
    from deploykit.core.chain import to_chain
    from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
    from deploykit.uncertainty.regression import StdScaleFit

    proto = build_mc_graph(to_chain(regression_model), MCConfig(samples=20, seed=3, task=Task.REGRESSION))
    x = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    before = run(session(proto), x)
    scaled = onnx.ModelProto()
    scaled.CopyFrom(proto)
    apply_std_scale(scaled, StdScaleFit(1.7, 2.0, 1.5, 100))
    after = run(session(scaled), x)  # a seeded model's first call repeats in a new session
    assert np.array_equal(after["mean"], before["mean"])
    assert np.abs(after["std"] - 1.7 * before["std"]).max() <= 1e-5
    assert read_std_scale(scaled)["std_scale"] == 1.7
    with pytest.raises(UsageError, match="already holds a std scale"):
        apply_std_scale(scaled, StdScaleFit(1.7, 2.0, 1.5, 100))
