"""Recurrent layers between the two Keras: the options each lacks (deploykit.keras3.rnn), and files both ways."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import UnsupportedLayerError
from deploykit.keras3.rnn import rnn_options, wrapped_layers


def test_tf_keras_only_options_dropped_for_keras3():
    config = {"name": "lstm", "units": 8, "implementation": 2, "time_major": False, "unroll": False}
    assert rnn_options("lstm", "LSTM", config, to_keras3=True) == {"name": "lstm", "units": 8, "unroll": False}
    assert "implementation" not in rnn_options("gru", "GRU", {**config, "implementation": 1}, to_keras3=True)


def test_keras3_only_options_dropped_for_tf_keras():
    config = {"name": "gru", "units": 8, "seed": 1337, "zero_output_for_mask": False}
    assert rnn_options("gru", "GRU", config, to_keras3=False) == {"name": "gru", "units": 8}


def test_options_that_change_the_function_are_refused():
    with pytest.raises(UnsupportedLayerError, match="time_major=True"):
        rnn_options("lstm", "LSTM", {"time_major": True}, to_keras3=True)
    with pytest.raises(UnsupportedLayerError, match="zero_output_for_mask=True"):
        rnn_options("lstm", "LSTM", {"zero_output_for_mask": True}, to_keras3=False)


def test_other_layers_untouched():
    config = {"name": "dense", "units": 3, "seed": 1}
    assert rnn_options("dense", "Dense", config, to_keras3=False) is config


def test_wrapper_translates_each_wrapped_layer():
    seen = []

    def translate(name, kind, config):
        seen.append((name, kind))
        return {**config, "translated": True}

    config = {
        "name": "bi",
        "merge_mode": "concat",
        "layer": {"class_name": "LSTM", "config": {"name": "forward_lstm", "units": 4}},
        "backward_layer": {"class_name": "LSTM", "config": {"name": "backward_lstm", "units": 4}},
    }
    out = wrapped_layers("bi", "Bidirectional", config, translate, to_keras3=True)
    assert seen == [("forward_lstm", "LSTM"), ("backward_lstm", "LSTM")]
    assert out["layer"]["config"]["translated"] and out["layer"]["module"] == "keras.layers"
    assert "module" not in wrapped_layers("bi", "Bidirectional", config, translate, to_keras3=False)["layer"]
    with pytest.raises(UnsupportedLayerError, match="wraps a Dense"):
        wrapped_layers(
            "bi", "Bidirectional", {"layer": {"class_name": "Dense", "config": {}}}, translate, to_keras3=True
        )


@pytest.mark.slow  # Keras 3 models saved, imported and saved back
def test_keras3_recurrent_files_round_trip(tmp_path):
    import keras as k3

    import deploykit.backend  # noqa: F401
    from deploykit.io.models import load_model
    from deploykit.keras3.convert import save_keras3

    L = k3.layers
    x = np.random.default_rng(0).integers(0, 50, (16, 9)).astype(np.float32)
    for name, body in {
        "lstm": [L.LSTM(6, return_sequences=True), L.GRU(4)],
        "bidirectional": [L.Bidirectional(L.LSTM(5)), L.Dense(4, activation="relu")],
        "simple_rnn": [L.SimpleRNN(4, go_backwards=True)],
    }.items():
        k3.utils.set_random_seed(0)
        model = k3.Sequential(
            [k3.Input((9,), dtype="int32"), L.Embedding(50, 8), *body, L.Dense(3, activation="softmax")]
        )
        model.save(tmp_path / f"{name}.keras")
        imported = load_model(tmp_path / f"{name}.keras")  # checked against Keras 3 within 1e-5 while loading
        expected = k3.ops.convert_to_numpy(model(x.astype(np.int32)))
        assert np.abs(imported(x).numpy() - expected).max() <= 1e-5, name
        save_keras3(imported, tmp_path / f"{name}_back.keras")  # tf_keras's implementation=2 is no obstacle
        back = k3.saving.load_model(tmp_path / f"{name}_back.keras")
        assert np.abs(k3.ops.convert_to_numpy(back(x)) - expected).max() <= 1e-5, name


def test_time_distributed_of_any_layer_imports_and_saves_back(tmp_path):
    """keras.io's CNN-RNN video classifier applies a CNN to each frame with ``TimeDistributed``: its wrapped Conv2D
    config is translated as a top-level one (it was "'str' object has no attribute 'name'"), weights in order."""
    import keras as k3

    from deploykit.io.models import load_model
    from deploykit.keras3.convert import save_keras3

    inputs = k3.Input((4, 8, 8, 1))
    h = k3.layers.TimeDistributed(k3.layers.Conv2D(6, 3, activation="relu"))(inputs)
    h = k3.layers.TimeDistributed(k3.layers.GlobalAveragePooling2D())(h)
    model = k3.Model(inputs, k3.layers.Dense(3, activation="softmax")(k3.layers.GRU(5)(h)))
    model.save(tmp_path / "cnn_rnn.keras")
    imported = load_model(tmp_path / "cnn_rnn.keras")
    x = np.random.default_rng(0).normal(size=(8, 4, 8, 8, 1)).astype(np.float32)
    want = np.asarray(model(x, training=False))
    assert np.abs(imported(x, training=False).numpy() - want).max() <= 1e-5
    save_keras3(imported, tmp_path / "back.keras")
    back = k3.saving.load_model(tmp_path / "back.keras")
    assert np.abs(np.asarray(back(x, training=False)) - want).max() <= 1e-5
