"""MultiHeadAttention, Permute and Dot in the MC Dropout graph: keras.io's Transformer blocks, ViT and CCT get an MC
Dropout model.

The block is keras.io's "Text classification with Transformer" (self-attention, Dropout, residual LayerNorm, a
feed-forward pair), then its head (pooling, Dropout, Dense). With every Dropout at rate 0 the MC graph's mean equals
the Keras model; at the model's rates it samples. Before, such a model's MC step was skipped: "cannot be expressed
in the MC Dropout graph".
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.graph import graph_from_model
from deploykit.errors import UnsupportedLayerError
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
from tests.uncertainty.support import run, session, zero_graph_dropout


def _transformer(cross: bool = False, use_bias: bool = True):
    from deploykit.backend import keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input((7, 8))
    x = L.Dense(8)(inputs)
    other = L.Dense(8)(inputs) if cross else x
    attention = L.MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3, use_bias=use_bias, dropout=0.1)
    attended = attention(x, other, other) if cross else attention(x, x)
    out1 = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, L.Dropout(0.1)(attended)]))
    ffn = L.Dense(8)(L.Dense(16, activation="relu")(out1))
    block = L.LayerNormalization(epsilon=1e-6)(L.Add()([out1, L.Dropout(0.1)(ffn)]))
    h = L.Dropout(0.1)(L.GlobalAveragePooling1D()(block))
    return keras.Model(inputs, L.Dense(3, activation="softmax")(h))


def _samples_and_equals_keras_at_rate_zero(model, x) -> None:
    graph = graph_from_model(model)
    assert run(session(build_mc_graph(graph, MCConfig(samples=20))), x)["std"].max() > 1e-3
    mean = run(session(build_mc_graph(zero_graph_dropout(graph), MCConfig(samples=2))), x)["mean"]
    assert np.abs(mean - model(x, training=False).numpy()).max() <= 1e-5


@pytest.mark.parametrize("case", ["self", "cross", "no_bias"])
def test_attention_equals_keras_at_rate_zero_and_samples_at_the_models_rates(case):
    model = _transformer(cross=case == "cross", use_bias=case != "no_bias")
    x = np.random.default_rng(0).standard_normal((16, 7, 8)).astype(np.float32)
    _samples_and_equals_keras_at_rate_zero(model, x)


def test_attention_over_image_axes_is_refused_by_name():
    from deploykit.backend import keras

    inputs = keras.Input((4, 4, 6))
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, name="spatial")(inputs, inputs)
    h = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(attended))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    with pytest.raises(UnsupportedLayerError, match="'spatial' of type MultiHeadAttention: the MC Dropout graph emits"):
        build_mc_graph(graph_from_model(model), MCConfig(samples=4))


def test_a_vision_transformers_patches_and_a_cct_pooling_equal_keras_at_rate_zero():
    # what keras.io's ViT Patches and CCT SequencePooling are read as (deploykit.keras3): Reshape / Permute / Reshape,
    # and a Dot of the attention weights and the sequence
    from deploykit.backend import keras

    L = keras.layers
    inputs = keras.Input((8, 8, 2))
    rows = L.Reshape((2, 4, 2, 4, 2))(inputs)
    patches = L.Reshape((4, 32))(L.Permute((1, 3, 2, 4, 5))(rows))
    encoded = L.Dropout(0.2)(L.Dense(6)(patches))
    weights = L.Permute((2, 1))(L.Softmax(axis=1)(L.Dense(1)(encoded)))
    pooled = L.Reshape((6,))(L.Dot(axes=[2, 1])([weights, encoded]))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(pooled))
    x = np.random.default_rng(1).standard_normal((16, 8, 8, 2)).astype(np.float32)
    _samples_and_equals_keras_at_rate_zero(model, x)
