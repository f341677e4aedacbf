"""The MC Dropout graph's recurrent layers: with every dropout at rate 0 the graph computes the Keras model."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from deploykit.core.graph import graph_from_model
from deploykit.errors import UnsupportedLayerError
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
from tests.uncertainty.support import run, session, zero_graph_dropout


def _model(body, steps: int = 7, features: int = 5):
    from deploykit.backend import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((steps * features,)),
            keras.layers.Reshape((steps, features)),
            *body,
            keras.layers.Dropout(0.3),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    # non-zero biases, so a wrong bias layout shows
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights(
                [w + 0.1 * np.random.default_rng(1).standard_normal(w.shape).astype(np.float32) for w in weights]
            )
    return model


def _rate_zero_mean(model, x):
    graph = zero_graph_dropout(graph_from_model(model))
    return run(session(build_mc_graph(graph, MCConfig(samples=2))), x)["mean"]


def _cases():
    from deploykit.backend import keras

    L = keras.layers
    return {
        "lstm": [L.LSTM(6)],
        "lstm_sequences_then_gru": [L.LSTM(6, return_sequences=True), L.GRU(3)],
        "gru_reset_before": [L.GRU(6, reset_after=False)],
        "simple_rnn_backwards": [L.SimpleRNN(6, go_backwards=True, activation="relu")],
        "bidirectional_lstm": [L.Bidirectional(L.LSTM(4))],
        "bidirectional_gru_sum_sequences": [
            L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="sum"),
            L.GlobalAveragePooling1D(),
        ],
        "lstm_no_bias": [L.LSTM(5, use_bias=False)],
    }


@functools.cache
def _case_model(case: str):
    """The model of one case, built once per process (a recurrent layer's build traces TensorFlow functions: a
    few tenths of a CPU second each); the tests only read it."""
    return _model(_cases()[case])


@pytest.mark.parametrize("case", sorted(_cases()))
def test_rate_zero_equals_keras(case):
    model = _case_model(case)
    x = np.random.default_rng(0).standard_normal((16, 35)).astype(np.float32)
    assert np.abs(_rate_zero_mean(model, x) - model(x, training=False).numpy()).max() <= 1e-5


def test_dropout_after_lstm_samples():
    model = _case_model("lstm")
    x = np.random.default_rng(0).standard_normal((8, 35)).astype(np.float32)
    out = run(session(build_mc_graph(graph_from_model(model), MCConfig(samples=20))), x)
    assert out["std"].max() > 1e-3
    assert np.abs(out["mean"] - model(x, training=False).numpy()).max() < 0.2


def test_what_onnx_cannot_say_is_refused_by_name():
    from deploykit.backend import keras

    model = _model([keras.layers.LSTM(4, activation="softsign")])
    with pytest.raises(UnsupportedLayerError, match="activation 'softsign'"):
        build_mc_graph(graph_from_model(model))
    masked = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Embedding(10, 3, mask_zero=True),
            keras.layers.LSTM(4),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    with pytest.raises(UnsupportedLayerError, match="mask_zero"):
        build_mc_graph(graph_from_model(masked))


def _states_model(kind: str):
    """An encoder returning its states, a dropout on its sequence, a decoder started from the states (the
    decoder runs on the T * N tiled rows, so the states are tiled into it), and a head on the decoder's output and
    its own final state: keras.io's lstm_seq2seq wiring on one input."""
    from deploykit.backend import keras

    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}[kind]
    keras.utils.set_random_seed(5)
    x = keras.Input((35,))
    steps = keras.layers.Reshape((7, 5))(x)
    sequence, *states = layer(6, return_sequences=True, return_state=True)(steps)
    sampled = keras.layers.Dropout(0.3)(sequence)
    decoded, *final = layer(6, return_state=True, go_backwards=kind == "simple_rnn")(sampled, initial_state=states)
    joined = keras.layers.Concatenate()([decoded, final[-1], states[0]])
    model = keras.Model(x, keras.layers.Dense(4, activation="softmax")(joined))
    for layer in model.layers:  # non-zero biases and initial states that matter
        weights = layer.get_weights()
        if weights:
            layer.set_weights([w + 0.1 * np.random.default_rng(2).standard_normal(w.shape) for w in weights])
    return model


def _bidirectional_states_model():
    """The usual NMT encoder: a Bidirectional LSTM returning its four states (forward h, c, backward h, c), the two
    directions' h and c concatenated to start a decoder LSTM of twice the units, after a dropout."""
    from deploykit.backend import keras

    keras.utils.set_random_seed(6)
    x = keras.Input((35,))
    steps = keras.layers.Reshape((7, 5))(x)
    sequence, fh, fc, bh, bc = keras.layers.Bidirectional(
        keras.layers.LSTM(4, return_sequences=True, return_state=True)
    )(steps)
    h, c = keras.layers.Concatenate()([fh, bh]), keras.layers.Concatenate()([fc, bc])
    decoded = keras.layers.LSTM(8)(keras.layers.Dropout(0.3)(sequence), initial_state=[h, c])
    return keras.Model(x, keras.layers.Dense(4, activation="softmax")(keras.layers.Concatenate()([decoded, bc])))


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn", "bidirectional"])
def test_returned_states_and_initial_states_equal_keras_at_rate_zero(kind):
    """A recurrent layer's return_state outputs and initial_state inputs are the ONNX recurrence's Y_h / Y_c (per
    direction, in Keras' order) and initial_h / initial_c (the MC step skipped such models before: "return_state=True
    has no form")."""
    model = _bidirectional_states_model() if kind == "bidirectional" else _states_model(kind)
    x = np.random.default_rng(0).standard_normal((16, 35)).astype(np.float32)
    assert np.abs(_rate_zero_mean(model, x) - model(x, training=False).numpy()).max() <= 1e-5
    assert run(session(build_mc_graph(graph_from_model(model), MCConfig(samples=20))), x)["std"].max() > 1e-3
