"""Property-based checks of the BatchNorm fold: random widths, epsilons, statistics and placements."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow  # property tests over many built models

TOL = 1e-5
PLACEMENTS = ("backward", "backward_no_bias", "forward", "first", "normalization_then_bn", "before_flatten")

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def bn_cases(draw):
    return {
        "placement": draw(st.sampled_from(PLACEMENTS)),
        "features": draw(st.integers(1, 12)),
        "hidden": draw(st.integers(1, 24)),
        "epsilon": 10.0 ** draw(st.floats(-5.0, -0.5)),
        "center": draw(st.booleans()),
        "scale": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _build(case):
    from deploykit.backend import keras

    L = keras.layers
    rng = np.random.default_rng(case["seed"])
    f, h = case["features"], case["hidden"]

    def bn():
        return L.BatchNormalization(epsilon=case["epsilon"], center=case["center"], scale=case["scale"])

    head = L.Dense(4, activation="softmax")
    body = {
        "backward": [L.Dense(h), bn(), L.Activation("elu"), head],
        "backward_no_bias": [L.Dense(h, use_bias=False), bn(), L.Activation("tanh"), head],
        "forward": [L.Dense(h, activation="relu"), bn(), L.Dropout(0.5), head],
        "first": [bn(), L.Dense(h, activation="elu"), head],
        "normalization_then_bn": [
            L.Normalization(mean=rng.normal(0, 3, f), variance=rng.uniform(0.1, 9, f)),
            bn(),
            L.Dense(h, activation="elu"),
            head,
        ],
        "before_flatten": [bn(), L.Flatten(), L.Dense(h, activation="elu"), head],
    }[case["placement"]]
    shape = (3, f) if case["placement"] == "before_flatten" else (f,)
    model = keras.Sequential([keras.Input(shape=shape), *body])
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.moving_mean.shape
            values = {
                "gamma": rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-0.7, 0.3, n),
                "beta": rng.normal(0, 2, n),
                "moving_mean": rng.normal(0, 3, n),
                "moving_variance": 10.0 ** rng.uniform(-1.3, 1, n),
            }
            layer.set_weights([values[w.name.split("/")[-1].split(":")[0]].astype("float32") for w in layer.weights])
    return model, rng


@pytest.mark.slow
@SETTINGS
@given(bn_cases())
def test_fold_is_exact_for_random_statistics(case):
    from deploykit.fold import fold_batchnorm

    model, rng = _build(case)
    folded, report = fold_batchnorm(model)
    kinds = {type(l).__name__ for l in folded.layers}
    assert not kinds & {"BatchNormalization", "Normalization"}
    assert report.changed and not report.unfolded
    assert report.max_abs_diff <= TOL
    x = rng.normal(0, 3, (500, *model.input_shape[1:])).astype("float32")
    diff = np.abs(folded(x, training=False).numpy() - model(x, training=False).numpy()).max()
    assert diff <= TOL


@pytest.mark.slow
@SETTINGS
@given(st.integers(1, 10), st.floats(-4.0, 4.0), st.floats(-2.0, 1.0), st.integers(0, 2**31 - 1))
def test_normalization_fold_takes_raw_inputs(features, log_mean, log_std, seed):
    """Standardization stats over many scales: the folded model on raw inputs matches the original."""
    from deploykit.backend import keras
    from deploykit.fold import fold_batchnorm

    rng = np.random.default_rng(seed)
    std = 10.0 ** (log_std + rng.uniform(-0.5, 0.5, features))
    mean = std * rng.uniform(-50, 50, features) if log_mean > 0 else rng.normal(0, 10.0**log_mean, features)
    model = keras.Sequential(
        [
            keras.Input(shape=(features,)),
            keras.layers.Normalization(mean=mean, variance=std**2),
            keras.layers.Dense(6, activation="elu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    folded, report = fold_batchnorm(model)
    assert report.changed and report.max_abs_diff <= TOL
    x = (mean + std * rng.standard_normal((300, features))).astype("float32")
    assert np.abs(folded(x).numpy() - model(x).numpy()).max() <= TOL
