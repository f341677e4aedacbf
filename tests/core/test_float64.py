"""The float64 twin: the same layers and weights computing in float64 (deploykit.core.float64)."""

import numpy as np

from deploykit.backend import keras
from deploykit.core.evaluate import outputs
from deploykit.core.float64 import float64_outputs, float64_twin


def _dense_bn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="elu")(inp)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))


def test_twin_computes_in_float64_with_the_same_weights():
    model = _dense_bn()
    twin = float64_twin(model)
    assert all(layer.dtype == "float64" for layer in twin.layers[1:])
    assert all(w.dtype == np.float64 for w in twin.get_weights())
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a.astype(np.float64), b)
    assert model.layers[1].dtype == "float32"  # the user's model is untouched


def test_twin_outputs_match_numpy_in_float64_closer_than_float32():
    model = _dense_bn(1)
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    k, b, gamma, beta, mean, var, k2, b2 = (w.astype(np.float64) for w in model.get_weights())
    h = x.astype(np.float64) @ k + b
    h = np.where(h > 0, h, np.expm1(np.minimum(h, 0)))
    h = (h - mean) / np.sqrt(var + 1e-3) * gamma + beta
    z = h @ k2 + b2
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    got = float64_outputs(model, x)
    assert got.dtype == np.float64
    assert np.abs(got - want).max() < 1e-10
    assert np.abs(outputs(model, x) - want).max() > 1e-9  # float32 is not: the twin is really wider


def test_sequential_with_convolutions():
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    x = np.random.default_rng(1).normal(size=(5, 8, 8, 1)).astype(np.float32)
    got = float64_outputs(model, x)
    assert got.shape == (5, 2) and got.dtype == np.float64
    assert np.abs(got - outputs(model, x)).max() < 1e-5
