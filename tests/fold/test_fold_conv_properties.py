"""Property-based checks of the convolution folds: random kernels, strides, paddings, epsilons and placements."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import randomize_batchnorm

pytestmark = pytest.mark.slow  # property tests over many built models

TOL = 1e-5
PLACEMENTS = ("conv", "depthwise", "separable", "conv1d", "forward_valid", "forward_avgpool", "forward_maxpool")
SETTINGS = settings(
    max_examples=14,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def cases(draw):
    return {
        "placement": draw(st.sampled_from(PLACEMENTS)),
        "channels": draw(st.integers(1, 4)),
        "filters": draw(st.integers(1, 5)),
        "kernel": draw(st.integers(1, 3)),
        "stride": draw(st.integers(1, 2)),
        "padding": draw(st.sampled_from(("valid", "same"))),
        "use_bias": draw(st.booleans()),
        "epsilon": 10.0 ** draw(st.floats(-5.0, -0.5)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _build(case):
    from deploykit.backend import keras, set_seed

    set_seed(case["seed"] % 1000)
    L = keras.layers
    c, f, k, s, pad = case["channels"], case["filters"], case["kernel"], case["stride"], case["padding"]
    bn = L.BatchNormalization(epsilon=case["epsilon"])
    conv = {
        "conv": lambda: L.Conv2D(f, k, strides=s, padding=pad, use_bias=case["use_bias"]),
        "depthwise": lambda: L.DepthwiseConv2D(
            k, strides=s, padding=pad, depth_multiplier=f, use_bias=case["use_bias"]
        ),
        "separable": lambda: L.SeparableConv2D(f, k, strides=s, padding=pad, use_bias=case["use_bias"]),
    }
    p = case["placement"]
    if p in conv:
        layers = [keras.Input((7, 7, c)), conv[p](), bn, L.Activation("tanh"), L.Flatten()]
    elif p == "conv1d":
        layers = [
            keras.Input((9, c)),
            L.Conv1D(f, k, strides=s, padding=pad, use_bias=case["use_bias"]),
            bn,
            L.Activation("elu"),
            L.Flatten(),
        ]
    else:
        pool = {
            "forward_valid": [],
            "forward_avgpool": [L.AveragePooling2D(padding=pad)],
            "forward_maxpool": [L.MaxPooling2D(padding=pad)],
        }[p]
        layers = [keras.Input((8, 8, c)), bn, *pool, L.Conv2D(f, k, strides=s, use_bias=case["use_bias"]), L.Flatten()]
    model = keras.Sequential([*layers, L.Dense(3)])
    randomize_batchnorm(model, case["seed"])
    return model


@pytest.mark.slow  # a property test: many conv folds
@SETTINGS
@given(cases())
def test_every_claimed_conv_placement_folds_exactly(case):
    from deploykit.fold import fold_batchnorm

    model = _build(case)
    folded, report = fold_batchnorm(model)
    assert len(report.folded) == 1 and not report.unfolded, report.table()
    assert "BatchNormalization" not in [type(l).__name__ for l in folded.layers]
    x = np.random.default_rng(1).normal(size=(8, *model.input_shape[1:])).astype("float32")
    diff = np.abs(model(x, training=False).numpy() - folded(x, training=False).numpy()).max()
    assert diff <= TOL * max(1.0, float(np.abs(model(x, training=False).numpy()).max())), diff
    assert report.max_abs_diff <= TOL * 10
