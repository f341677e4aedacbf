"""The merge layers the Keras 3 import gives two-tensor operations (Subtract, Maximum, Minimum, Average) in the MC
graph."""

from __future__ import annotations

import numpy as np

from deploykit.core.graph import graph_from_model
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
from tests.uncertainty.support import run, session


def test_merges_sample_like_keras_at_rate_zero_and_vary_with_dropout():
    from deploykit.backend import keras

    L = keras.layers
    inputs = keras.Input((6,))
    a, b, c = (L.Dense(5, name=f"d{k}")(inputs) for k in range(3))
    m = L.Maximum()([L.Subtract()([a, b]), L.Minimum()([b, c]), c])
    h = L.Average()([m, a, L.Dropout(0.0, name="drop")(b)])
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(h))
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    out = run(session(build_mc_graph(graph_from_model(model), MCConfig(samples=3))), x)
    assert np.abs(out["mean"] - model(x, training=False).numpy()).max() <= 1e-6
    model.get_layer("drop").rate = 0.5
    out = run(session(build_mc_graph(graph_from_model(model), MCConfig(samples=50))), x)
    assert out["std"].max() > 1e-3
