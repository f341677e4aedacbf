"""Layers with several outputs, and recurrent layers started from given states (deploykit.core.graph).

keras.io's lstm_seq2seq, line for line (tests/multi_models.py): its encoder LSTM returns its states h and c
(``return_state=True``) and the decoder LSTM starts from them (``initial_state=``); the example's inference models
output those states, and take them as inputs. Each was refused before ("reads a layer's second output", "called
with {'initial_state': ...}"). Read from Keras 3 and tf_keras files, they compute what the user's model computes.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.graph import source_of, tensor_name
from tests.multi_models import SEQ2SEQ_STEPS, lstm_seq2seq, tensor_names


def test_a_tensor_name_says_which_output_of_a_layer_it_is():
    assert tensor_name("lstm") == "lstm" and tensor_name("lstm", 0) == "lstm"
    assert tensor_name("lstm", 2) == "lstm:2"
    assert source_of("lstm:2") == ("lstm", 2) and source_of("lstm") == ("lstm", 0)
    assert source_of("dense_1") == ("dense_1", 0)


def test_a_live_tf_keras_graph_names_each_output_it_reads_and_builds_back_exactly():
    """The reader keeps which output of the encoder each read takes; every node knows its outputs' shapes."""
    from deploykit.backend import keras
    from deploykit.core.graph import graph_from_model, to_keras

    source = keras.Input((4, 3), name="source")
    sequence, h, c = keras.layers.LSTM(5, return_state=True, return_sequences=True, name="encoder")(source)
    decoded = keras.layers.LSTM(5, name="decoder")(sequence, initial_state=[h, c])
    model = keras.Model(source, [keras.layers.Dense(2, name="head")(decoded), c])
    graph = graph_from_model(model)
    assert graph.node("decoder").inputs == ["encoder", "encoder:1", "encoder:2"]
    assert graph.outputs == ["head", "encoder:2"]
    assert graph.shape("encoder") == (4, 5) and graph.shape("encoder:2") == (5,)
    assert [n.name for n in graph.consumers("encoder")] == ["decoder"] and graph.fan_out("encoder") == 2
    x = np.random.default_rng(0).normal(size=(6, 4, 3)).astype(np.float32)
    for got, want in zip(to_keras(graph)(x), model(x), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


def _feed(model, arrays: dict, states: dict | None = None) -> dict:
    """The model's inputs by name (deploykit's names), from the example's arrays and, for the decoder, the states."""
    names = tensor_names(model.inputs)
    values = {  # encoder: the source; training: the source, then the target so far; decoder: that, then h and c
        1: [arrays["source"]],
        2: [arrays["source"], arrays["target_in"]],
        3: [arrays["target_in"], *(states or [])],
    }[len(names)]
    return dict(zip(names, values, strict=True))


@pytest.mark.slow  # trains the example for an epoch, saves and imports three models in both Keras
@pytest.mark.parametrize("tf_keras", [False, True], ids=["keras3", "tf_keras"])
def test_keras_io_lstm_seq2seq_and_its_inference_models_load_and_compute_the_same(tmp_path, tf_keras):
    from deploykit.core.multi_io_model import packing_of
    from deploykit.io.models import load_model

    training, encoder, decoder, arrays = lstm_seq2seq(tf_keras=tf_keras, rows=32, epochs=1)
    rows = 8
    arrays = {k: v[:rows] for k, v in arrays.items()}
    states = [np.asarray(s) for s in encoder.predict(arrays["source"], verbose=0)]
    for name, model in (("training", training), ("encoder", encoder), ("decoder", decoder)):
        path = tmp_path / (f"{name}.h5" if tf_keras else f"{name}.keras")
        model.save(path)
        feed = _feed(model, arrays, states)
        loaded = load_model(path, input_shapes={k: v.shape[1:] for k, v in feed.items()})
        layout = packing_of(loaded).layout
        assert layout.output_names() == sorted(tensor_names(model.outputs)), name
        given = [feed[k] for k in tensor_names(model.inputs)]
        want = model.predict(given if len(given) > 1 else given[0], verbose=0)
        want = dict(zip(tensor_names(model.outputs), want if isinstance(want, list) else [want], strict=True))
        x = layout.join_inputs(feed) if layout.several_inputs else given[0]
        got = layout.split_outputs(loaded(x).numpy())
        for key, value in want.items():
            assert got[key].shape == value.shape, (name, key)
            np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=f"{name} {key}")
    assert states[0].shape == (rows, 16) and arrays["target_in"].shape[1] == SEQ2SEQ_STEPS + 1


@pytest.mark.slow  # two Keras 3 models trained briefly, saved and imported
def test_a_gru_started_from_one_state_and_a_bidirectional_returning_four_load_and_compute_the_same(tmp_path):
    """A GRU's ``initial_state`` given as one tensor (not a list), and a Bidirectional LSTM's four returned states
    (forward h, c, backward h, c) read by index. The Bidirectional model was wired to the wrong tensors before
    (Keras 3's reads lost their index: a Concatenate of two lists, a ValueError)."""
    import keras

    from deploykit.io.models import load_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 4)).astype("float32")
    keras.utils.set_random_seed(0)
    steps = keras.Input((6, 4), name="steps")
    sequence, h = keras.layers.GRU(8, return_sequences=True, return_state=True)(steps)
    decoded = keras.layers.GRU(8)(sequence, initial_state=h)
    gru = keras.Model(steps, keras.layers.Dense(2, activation="softmax")(keras.layers.Concatenate()([decoded, h])))
    _, forward_h, _, backward_h, backward_c = keras.layers.Bidirectional(keras.layers.LSTM(8, return_state=True))(steps)
    heads = keras.layers.Concatenate()([forward_h, backward_h, backward_c])
    bidirectional = keras.Model(steps, keras.layers.Dense(2, activation="softmax")(heads))
    for name, model in (("gru", gru), ("bidirectional", bidirectional)):
        model.save(tmp_path / f"{name}.keras")
        loaded = load_model(tmp_path / f"{name}.keras")
        np.testing.assert_allclose(loaded(x).numpy(), model.predict(x, verbose=0), atol=1e-5, err_msg=name)
