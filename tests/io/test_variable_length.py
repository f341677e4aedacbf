"""Text and sequence models with no fixed input length (keras.io's ``Input(shape=(None,))``), sized from --data.

The text model is keras.io's "Text classification from scratch" (Embedding -> Conv1D x2 -> GlobalMaxPooling1D ->
Dense -> sigmoid), built in Keras 3 as the page does and trained two epochs on digits read as 64 token ids; the
artifacts are run in onnxruntime and LiteRT themselves and compared with the Keras 3 model on the test rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.errors import DataError, UnsizedInputError
from deploykit.io.lengths import data_shapes, load_model_for, sizing

#: The tf_keras LSTM is saved as .h5 on purpose (a legacy format deploykit reads).
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

VOCAB = 20  # digits' pixel values are 0..16: token ids of a 20-token vocabulary
#: optimize's timed runs per latency figure: no test here reads a latency.
LATENCY_REPEATS = ("--latency-repeats", "2")


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    return keras


def _text_model(k3):
    """keras.io's text classifier (smaller widths), variable-length int64 token ids in."""
    L = k3.layers
    inputs = k3.Input(shape=(None,), dtype="int64")
    x = L.Embedding(VOCAB, 16)(inputs)
    x = L.Dropout(0.5)(x)
    x = L.Conv1D(32, 7, padding="valid", activation="relu", strides=3)(x)
    x = L.Conv1D(32, 7, padding="valid", activation="relu", strides=3)(x)
    x = L.GlobalMaxPooling1D()(x)
    x = L.Dense(32, activation="relu")(x)
    x = L.Dropout(0.5)(x)
    predictions = L.Dense(1, activation="sigmoid", name="predictions")(x)
    model = k3.Model(inputs, predictions)
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def _input_name(model) -> str:
    """The name Keras gave the model's unnamed Input (``input_layer``, ``input_layer_1``... in one session)."""
    return model.layers[0].name


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """Digits as 64 token ids each; the class is digit >= 5."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.int64), (digits.target >= 5).astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "txt.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


@pytest.fixture(scope="module")
def untrained_text(k3, tmp_path_factory):
    k3.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("untrained") / "txt.keras"
    model = _text_model(k3)
    model.save(path)
    return path, model


@pytest.fixture(scope="module")
def trained_text(k3, tokens, tmp_path_factory):
    """The text model trained two epochs, as keras.io trains it (fit, then save)."""
    _, x, y = tokens
    k3.utils.set_random_seed(0)
    model = _text_model(k3)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("trained") / "txt.keras"
    model.save(path)
    return path, model


# --- without data: one line saying what to do ------------------------------------------------------------------


@pytest.mark.parametrize("command", [("fold", "--out", "folded.keras"), ("export", "--out", "out")])
def test_without_data_a_variable_length_model_is_one_line_saying_what_to_do(cli, untrained_text, tmp_path, command):
    name, flag, out = command
    path, model = untrained_text
    done = cli(name, path, flag, tmp_path / out)
    assert done.returncode == 1
    [line] = [l for l in done.stderr.splitlines() if l.startswith(f"deploykit {name}: error: ")]
    assert f"input {_input_name(model)!r} (None,) has no fixed length" in line
    assert "give --data" in line and "save the model with a fixed input shape" in line
    assert not (tmp_path / out).exists()


def test_fold_takes_data_for_the_length_alone_and_writes_the_model_at_it(cli, k3, untrained_text, tokens, tmp_path):
    path, model = untrained_text
    done = cli("fold", path, "--data", tokens[0], "--out", tmp_path / "folded.keras")
    assert done.returncode == 0, done.stderr
    assert f"input {_input_name(model)!r} has no fixed length; fixed to 64 from the data" in done.stderr
    folded = k3.saving.load_model(tmp_path / "folded.keras")
    assert folded.input_shape == (None, 64)
    x = tokens[1][:16]
    np.testing.assert_allclose(np.asarray(folded(x.astype(np.float32))), np.asarray(model(x)), atol=1e-6)


def _tf_keras_lstm(path):
    """A tf_keras LSTM over sequences of any length of 8 features, saved as .h5."""
    from deploykit.backend import keras, set_seed

    set_seed(0)
    inputs = keras.Input(shape=(None, 8), name="steps")
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.LSTM(6)(inputs))
    model = keras.Model(inputs, outputs)
    model.save(path)
    return model


def test_a_tf_keras_file_is_sized_from_the_data_and_computes_the_same(tmp_path):
    original = _tf_keras_lstm(tmp_path / "lstm.h5")
    x = np.random.default_rng(0).standard_normal((12, 5, 8)).astype(np.float32)
    with pytest.raises(UnsizedInputError, match=r"'steps' \(None, 8\) has no fixed length"):
        load_model_for(tmp_path / "lstm.h5", None)
    said = []
    model = load_model_for(tmp_path / "lstm.h5", (x, np.arange(12) % 2), say=said.append)
    assert model.input_shape == (None, 5, 8)
    assert said == ["input 'steps' has no fixed length; fixed to 5 from the data"] == sizing(model)
    np.testing.assert_allclose(model(x).numpy(), original(x).numpy(), atol=1e-6)
    with pytest.raises(DataError, match=r"takes samples of shape \(None, 8\), but the data's are \(5, 7\)"):
        load_model_for(tmp_path / "lstm.h5", (x[..., :7], np.arange(12) % 2))


def test_data_shapes_are_read_off_npz_headers_arrays_and_datasets(tmp_path):
    two = {"numbers": (5,), "tokens": (None,)}
    np.savez(tmp_path / "named.npz", tokens_train=np.zeros((4, 12)), numbers_train=np.zeros((4, 5)), y_train=[0] * 4)
    assert data_shapes(tmp_path / "named.npz", two) == {"tokens": (12,)}  # a sized input needs no array here
    np.savez(tmp_path / "x.npz", x=np.zeros((4, 64)), y=[0] * 4)
    assert data_shapes(str(tmp_path / "x.npz"), {"input_layer": (None,)}) == {"input_layer": (64,)}
    assert data_shapes({"tokens": np.zeros((3, 9))}, two) == {"tokens": (9,)}
    assert data_shapes((np.zeros((3, 7, 2)), [0, 1, 0]), {"seq": (None, 2)}) == {"x": (7, 2)}
    assert data_shapes("digits", {"x": (None,)}) == {"x": (64,)}
    with pytest.raises(DataError, match=r"no array gives the size of input 'tokens' .*found \['x', 'y'\]"):
        data_shapes(tmp_path / "x.npz", two)  # x names a one-input model's input only


# --- with data: the artifacts at the data's length ---------------------------------------------------------------


def _test_rows(data_path):
    """The test rows every command evaluates on (deploykit's own split of the .npz, default seed)."""
    from deploykit.data.dataset import load_dataset

    data = load_dataset(data_path)
    return data.x_test, data.y_test


def _tflite_probabilities(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    [given] = interpreter.get_input_details()
    assert list(given["shape"][1:]) == [64]  # the length the data fixed
    interpreter.resize_tensor_input(given["index"], [len(x), 64])
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], x.astype(np.float32))
    interpreter.invoke()
    [out] = interpreter.get_output_details()
    return interpreter.get_tensor(out["index"])


@pytest.mark.slow  # trains the Keras 3 model two epochs, exports, runs both runtimes and validates
def test_export_at_the_data_length_agrees_with_the_keras3_model(cli, trained_text, tokens, tmp_path):
    import onnxruntime as ort

    path, keras3_model = trained_text
    out = tmp_path / "out"
    done = cli("export", path, "--data", tokens[0], "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"input {_input_name(keras3_model)!r} has no fixed length; fixed to 64 from the data" in done.stderr
    x, y = _test_rows(tokens[0])
    expected = np.asarray(keras3_model(x.astype(np.int64), training=False))[:, 0]
    session = ort.InferenceSession(str(out / "model.onnx"))
    [given] = session.get_inputs()
    assert given.shape[1:] == [64]
    onnx_p = session.run(["probabilities"], {given.name: x.astype(np.float32)})[0]
    tflite_p = _tflite_probabilities(out / "model.tflite", x)
    for probabilities in (onnx_p, tflite_p):
        assert probabilities.shape == (len(x), 2)
        assert np.abs(probabilities[:, 1] - expected).max() <= 1e-4
        assert np.mean((probabilities[:, 1] >= 0.5) == y) == np.mean((expected >= 0.5) == y)
    for artifact in ("model.onnx", "model.tflite"):
        checked = cli("validate", out / artifact, "--data", tokens[0], "--reference", path)
        assert checked.returncode == 0, checked.stderr


@pytest.mark.slow  # optimize end to end (no sparsity search, no MC) on the trained Keras 3 model
def test_optimize_ships_at_the_data_length_and_reports_it(cli, k3, trained_text, tokens, tmp_path):
    path, keras3_model = trained_text
    out = tmp_path / "out"
    done = cli(
        "optimize", path, "--data", tokens[0], "--out", out, "--no-sparsity", "--no-mc", "--quantize", "float32",
        *LATENCY_REPEATS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    line = f"input {_input_name(keras3_model)!r} has no fixed length; fixed to 64 from the data"
    assert line in report["notes"] and report["model"]["sized_from_data"] == [line]
    rows = {a["file"]: a for a in report["artifacts"]}
    assert rows["model.onnx"]["verdict"] == "pass" and rows["model.tflite"]["verdict"] == "pass"
    assert k3.saving.load_model(out / "model.keras").input_shape == (None, 64)


def _keras3_lstm(k3, path):
    """An LSTM over sequences of any length of 8 features (keras.io's sequence models)."""
    k3.utils.set_random_seed(0)
    inputs = k3.Input(shape=(None, 8), name="steps")
    model = k3.Model(inputs, k3.layers.Dense(1, activation="sigmoid")(k3.layers.LSTM(8)(inputs)))
    model.save(path)


def _keras3_two_inputs(k3, path):
    """Token ids of any length beside 5 numbers: only the tokens' length comes from the data."""
    k3.utils.set_random_seed(0)
    tokens, numbers = k3.Input(shape=(None,), dtype="int64", name="tokens"), k3.Input(shape=(5,), name="numbers")
    pooled = k3.layers.GlobalAveragePooling1D()(k3.layers.Embedding(VOCAB, 4)(tokens))
    joined = k3.layers.Concatenate()([pooled, numbers])
    k3.Model([tokens, numbers], k3.layers.Dense(1, activation="sigmoid")(joined)).save(path)


@pytest.mark.slow  # Keras 3 and tf_keras files exported and validated in both runtimes
@pytest.mark.parametrize("kind", ["keras3_lstm", "tf_keras_lstm", "keras3_two_inputs"])
def test_other_variable_length_models_export_at_the_data_shape(cli, k3, tmp_path, kind):
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    if kind == "keras3_two_inputs":
        model = tmp_path / "two.keras"
        _keras3_two_inputs(k3, model)
        np.savez(tmp_path / "d.npz", tokens=rng.integers(0, VOCAB, (200, 12)), numbers=rng.random((200, 5)), y=y)
        line = "input 'tokens' has no fixed length; fixed to 12 from the data"
    else:
        model = tmp_path / ("lstm.keras" if kind == "keras3_lstm" else "lstm.h5")
        _keras3_lstm(k3, model) if kind == "keras3_lstm" else _tf_keras_lstm(model)
        np.savez(tmp_path / "d.npz", x=rng.standard_normal((200, 10, 8)).astype(np.float32), y=y)
        line = "input 'steps' has no fixed length; fixed to 10 from the data"
    out = tmp_path / "out"
    done = cli("export", model, "--data", tmp_path / "d.npz", "--out", out)
    assert done.returncode == 0, done.stderr
    assert line in done.stderr
    summary = json.loads((out / "validation.json").read_text())
    assert summary["rejected"] == []
    assert {a["export"]["path"] for a in summary["artifacts"] if a["validation"]["passed"]} == {
        "model.onnx",
        "model.tflite",
    }


def test_the_api_sizes_a_keras3_object_from_its_data_argument(trained_text, tokens):
    # prune(model, data) with the Keras 3 object itself, as a notebook user calls it: the unsized length comes
    # from data, as optimize's does (before, only files and optimize were sized; this raised UnsizedInputError)
    from deploykit import compact, load_dataset, prune

    _, model = trained_text
    path, x, _ = tokens
    data = load_dataset(path)
    pruned, _ = prune(model, data, 0.5, epochs=1)
    assert type(pruned).__module__.startswith("keras") and tuple(pruned.inputs[0].shape) == (None, 64)
    assert pruned.predict(x[:8], verbose=0).shape == (8, 1)  # a working Keras 3 model at that length
    compacted, _ = compact(model, data)
    assert tuple(compacted.inputs[0].shape) == (None, 64)
    with pytest.raises(UnsizedInputError, match=f"^Keras 3 model {model.name!r}: input") as refused:
        compact(model)  # no data: the one-line refusal, naming the object, not the scratch file it was saved to
    assert "deploykit-keras3-" not in str(refused.value)


@pytest.mark.slow  # trains the tutorial's model briefly, then export runs both converters
def test_the_rnn_text_tutorials_masked_padding_is_skipped_in_every_export(cli, k3, tmp_path):
    """tensorflow.org's "Text classification with an RNN", the model after its encoder: ``Embedding(mask_zero=True)``
    -> ``Bidirectional(LSTM(64))`` -> Dense -> one logit, on zero-padded ids of different lengths. The padding is
    masked: the LSTMs skip it. Both artifacts compute what the Keras 3 model computes, so they skip it too (the
    same model without the mask differs)."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    rows, steps, vocab = 400, 24, 200
    lengths = rng.integers(3, steps + 1, rows)
    ids = rng.integers(1, vocab, (rows, steps))
    ids[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    y = ((ids > 0) & (ids < 60)).sum(axis=1) > 0.3 * lengths
    L = k3.layers
    k3.utils.set_random_seed(0)
    model = k3.Sequential(
        [
            k3.Input((None,), dtype="int64"),
            L.Embedding(input_dim=vocab, output_dim=16, mask_zero=True),
            L.Bidirectional(L.LSTM(16)),
            L.Dense(16, activation="relu"),
            L.Dense(1),
        ]
    )
    model.compile(loss=k3.losses.BinaryCrossentropy(from_logits=True), optimizer="adam")
    model.fit(ids, y.astype(np.int64), epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "rnn.keras")
    np.savez(tmp_path / "rnn.npz", x=ids, y=y.astype(np.int64))
    out = tmp_path / "out"
    done = cli("export", tmp_path / "rnn.keras", "--data", tmp_path / "rnn.npz", "--out", out, "--quantize", "float32")
    assert done.returncode == 0, done.stderr
    x = ids[:32]
    want = np.asarray(model(x, training=False))[:, 0]
    unmasked = k3.Sequential([k3.Input((None,), dtype="int64"), L.Embedding(vocab, 16), *model.layers[1:]])
    unmasked.layers[0].set_weights(model.layers[0].get_weights())
    assert np.abs(np.asarray(unmasked(x))[:, 0] - want).max() > 1e-3  # the mask changes what the model computes
    session = ort.InferenceSession(str(out / "model.onnx"))
    [given] = session.get_inputs()
    logits = {"onnx": session.run(None, {given.name: x.astype(np.float32)})[0]}
    runner = Interpreter(model_path=str(out / "model.tflite")).get_signature_runner()
    [name] = runner.get_input_details()
    logits["tflite"] = next(iter(runner(**{name: x.astype(np.float32)}).values()))
    for runtime, value in logits.items():
        assert np.abs(value.reshape(-1) - want).max() <= 1e-4, runtime
