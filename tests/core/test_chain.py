"""deploykit.core.chain: reading a dense network as layer specs and rebuilding it exactly."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.chain import from_chain, to_chain
from deploykit.errors import UnsafeModelError, UnsupportedLayerError
from tests.helpers import randomize_batchnorm


def _every_supported_layer():
    from deploykit.backend import keras

    rng = np.random.default_rng(0)
    adapted = keras.layers.Normalization()
    adapted.adapt(rng.normal(3.0, 2.0, size=(40, 12)).astype("float32"))
    model = keras.Sequential(
        [
            keras.Input(shape=(3, 4)),
            keras.layers.Flatten(),
            keras.layers.Normalization(mean=np.arange(12.0), variance=np.linspace(0.5, 2.0, 12)),
            adapted,
            keras.layers.Dense(10, activation="elu", kernel_initializer="he_normal"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(8),
            keras.layers.LeakyReLU(alpha=0.1),
            keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25)),
            keras.layers.ELU(alpha=0.5),
            keras.layers.ReLU(max_value=6.0),
            keras.layers.Dense(6, activation="selu", kernel_initializer="lecun_normal"),
            keras.layers.AlphaDropout(0.1),
            keras.layers.Activation("tanh"),
            keras.layers.Reshape((2, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
            keras.layers.Softmax(),
        ]
    )
    randomize_batchnorm(model, seed=1)
    return model


def test_round_trip_is_exact_and_leaves_the_input_alone():
    model = _every_supported_layer()
    before = [w.copy() for w in model.get_weights()]
    chain = to_chain(model)
    assert chain.input_shape == (3, 4)
    assert [s.class_name for s in chain.layers] == [type(l).__name__ for l in model.layers]
    rebuilt = from_chain(chain)
    x = np.random.default_rng(2).normal(size=(32, 3, 4)).astype("float32")
    assert np.array_equal(model(x, training=False).numpy(), rebuilt(x, training=False).numpy())
    assert all(a is not b for a, b in zip(model.layers, rebuilt.layers))
    for a, b in zip(model.get_weights(), rebuilt.get_weights()):
        assert np.array_equal(a, b)
    for a, b in zip(before, model.get_weights()):
        assert np.array_equal(a, b)
    # specs hold copies: editing them does not touch the source model
    chain.layers[3].weights[0][...] = 0.0
    assert np.array_equal(before[3], model.get_weights()[3])


def test_functional_chain_is_read_in_call_order():
    from deploykit.backend import keras

    inputs = keras.Input(shape=(5,))
    x = keras.layers.Dense(4, activation="relu", name="first")(inputs)
    x = keras.layers.Dropout(0.2, name="drop")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="last")(x)
    model = keras.Model(inputs, outputs)
    chain = to_chain(model)
    assert [s.name for s in chain.layers] == ["first", "drop", "last"]
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    assert np.array_equal(model(x).numpy(), from_chain(chain)(x).numpy())


def test_non_chains_are_refused():
    from deploykit.backend import keras

    inputs = keras.Input(shape=(5,))
    shared = keras.layers.Dense(5, name="shared")
    model = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(UnsupportedLayerError, match="shared"):
        to_chain(model)
    inner = keras.Sequential([keras.Input(shape=(5,)), keras.layers.Dense(3)], name="inner")
    with pytest.raises(UnsupportedLayerError, match="'inner'.*Sequential"):
        to_chain(keras.Sequential([keras.Input(shape=(5,)), inner]))


def test_lambda_needs_unsafe():
    from deploykit.backend import keras

    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Lambda(lambda t: t * 2.0, name="double")])
    with pytest.raises(UnsafeModelError, match="double"):
        to_chain(model)
    assert [s.class_name for s in to_chain(model, unsafe=True).layers] == ["Lambda"]
