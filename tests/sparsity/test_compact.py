"""compact: exact removal of dead neurons on constructed cases (no training needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.errors import StepError, UsageError

W1, W2 = 16, 12  # hidden widths of the constructed models


def _model(digits, act, *, bn=False, drop=None, seed=0):
    """Input -> Normalization -> Dense(16) -> [BN] -> [drop] -> Dense(12) -> [BN] -> [drop] -> Dense(10, softmax)."""
    from deploykit.backend import keras
    from tests.helpers import randomize_batchnorm

    layers = [
        keras.Input(shape=(64,)),
        keras.layers.Normalization(mean=digits.feature_mean, variance=np.maximum(digits.feature_var, 1e-6)),
    ]
    for width in (W1, W2):
        layers.append(keras.layers.Dense(width, activation=act))
        if bn:
            layers.append(keras.layers.BatchNormalization())
        if drop:
            layers.append(getattr(keras.layers, drop)(0.2))
    layers.append(keras.layers.Dense(10, activation="softmax"))
    model = keras.Sequential(layers)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "Dense":
            layer.set_weights([rng.normal(0, 0.4, w.shape).astype("float32") for w in layer.get_weights()])
    randomize_batchnorm(model, seed)
    return model


def _kill(model):
    """Dead neurons: (a) constant outputs, (b) zero outgoing weights, and chains only a fixed point finds."""
    d1, d2, d3 = [l for l in model.layers if type(l).__name__ == "Dense"]
    (k1, b1), (k2, b2), (k3, b3) = d1.get_weights(), d2.get_weights(), d3.get_weights()
    k1[:, [0, 1, 3]] = 0
    b1[[0, 3]] = 0.0  # n0, n3: act(0)
    b1[1] = -0.7  # n1: act(-0.7): 0 for relu only
    k2[2, :] = 0  # n2: no outgoing weights
    k2[:, 0] = 0
    k2[3, 0] = 1.3  # m0 listens only to n3: dead once n3 is folded away
    b2[0] = 0.0
    k2[6, :] = 0
    k2[6, 2] = 0.9  # n6 talks only to m2 ...
    k3[2, :] = 0  # ... and m2 talks to nobody: n6 dies in the second pass
    d1.set_weights([k1, b1])
    d2.set_weights([k2, b2])
    d3.set_weights([k3, b3])
    return model


def _max_diff(a, b, x):
    return float(np.abs(np.asarray(a(x, training=False)) - np.asarray(b(x, training=False))).max())


def _dense_widths(model):
    return tuple(l.units for l in model.layers if type(l).__name__ == "Dense")[:-1]


@pytest.mark.parametrize(
    "act, bn, drop, widths, kept",
    [
        ("relu", False, None, (11, 10), 0),
        ("elu", False, None, (11, 10), 0),
        ("selu", False, None, (11, 10), 0),
        ("sigmoid", False, None, (11, 10), 0),  # act(0) = 0.5 folds into the next bias
        ("elu", True, None, (11, 10), 0),  # BN between: the constant goes through it
        ("selu", True, None, (11, 10), 0),
        ("relu", False, "Dropout", (11, 10), 0),  # relu(0) = relu(-0.7) = 0: exact under MC Dropout
        ("elu", False, "Dropout", (12, 10), 1),  # elu(-0.7) != 0 would be scaled by the mask: n1 stays
        ("sigmoid", False, "Dropout", (14, 11), 3),  # 0.5 constants stay; zero-outgoing ones go
        ("elu", True, "Dropout", (14, 11), 3),  # BN makes the constants non-zero before the Dropout
        ("selu", False, "AlphaDropout", (14, 11), 3),  # dropped units become alpha': no constant may go
    ],
)
def test_compact_exact_on_dead_neurons(digits, act, bn, drop, widths, kept):
    from deploykit.sparsity import compact

    model = _kill(_model(digits, act, bn=bn, drop=drop))
    before = [w.copy() for w in model.get_weights()]
    small, report = compact(model, digits)
    assert _dense_widths(small) == widths
    assert report.max_abs_diff <= 1e-5
    diff = _max_diff(small, model, digits.x_test)
    assert diff <= 1e-5
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # input untouched
    assert [l.neurons_after for l in report.layers] == [*widths, 10]
    assert report.layers[0].constant_kept == kept
    assert report.macs_before == 64 * W1 + W1 * W2 + W2 * 10
    assert report.macs_after == 64 * widths[0] + widths[0] * widths[1] + widths[1] * 10
    assert report.neurons_removed == W1 + W2 - sum(widths)
    if widths == (11, 10):
        assert report.passes == 3  # n6 only dies after m2 is gone; the last pass finds nothing


def test_compact_keeps_one_neuron_per_layer(digits):
    from deploykit.sparsity import compact

    model = _model(digits, "relu")
    dense = [l for l in model.layers if type(l).__name__ == "Dense"]
    k, b = dense[0].get_weights()
    dense[0].set_weights([np.zeros_like(k), b])  # every neuron of the first layer is constant
    small, _ = compact(model, digits)
    assert _dense_widths(small)[0] == 1
    assert _max_diff(small, model, digits.x_test) <= 1e-5


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(
    act=st.sampled_from(["relu", "elu", "selu", "tanh", "sigmoid"]),
    bn=st.booleans(),
    dead_in=st.lists(st.integers(0, W1 - 1), max_size=10),
    dead_out=st.lists(st.integers(0, W2 - 1), max_size=8),
    seed=st.integers(0, 1000),
)
def test_compact_random_dead_patterns_are_exact(digits, act, bn, dead_in, dead_out, seed):
    from deploykit.sparsity import compact

    model = _model(digits, act, bn=bn, seed=seed)
    d1, d2, d3 = [l for l in model.layers if type(l).__name__ == "Dense"]
    k1, b1 = d1.get_weights()
    k1[:, dead_in] = 0
    d1.set_weights([k1, b1])
    k3, b3 = d3.get_weights()
    k3[dead_out, :] = 0
    d3.set_weights([k3, b3])
    small, report = compact(model, digits)
    assert report.max_abs_diff <= 1e-5
    assert _dense_widths(small) == (max(1, W1 - len(set(dead_in))), max(1, W2 - len(set(dead_out))))


def test_compact_refuses_bad_input(digits):
    from deploykit.backend import keras
    from deploykit.sparsity import compact

    no_dense = keras.Sequential([keras.Input(shape=(8, 8)), keras.layers.Flatten()])
    with pytest.raises(StepError, match="no Dense layer"):
        compact(no_dense)
    with pytest.raises(UsageError, match="tf_keras model"):
        compact("model.keras")
