"""Sequence models as Keras 3 users save them (Embedding + LSTM / GRU / Bidirectional / Conv1D), and the chapter's
MCDropout, through ``deploykit export`` and ``deploykit optimize``; a converter that refuses one format rejects that
format's artifacts with its reason and the others ship."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import ships_by_budget

pytestmark = pytest.mark.slow  # trains tiny Keras 3 models (1 epoch) and runs the CLI end to end

STEPS, VOCAB = 20, 200
#: optimize's timed runs per latency figure: no test here reads a latency, and a recurrent Keras model's eager call
#: takes tens of milliseconds, so the default 50 (+ warm-up and batch-256 runs) was a third to a half of a run's CPU.
LATENCY_REPEATS = ("--latency-repeats", "2")


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    return keras


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """300 token sequences; the class is which third of the vocabulary the first tokens' mean falls in."""
    rng = np.random.default_rng(0)
    x = rng.integers(1, VOCAB, (300, STEPS))
    y = (x[:, :5].mean(axis=1) * 3 // VOCAB).astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "tokens.npz"
    np.savez(path, x=x.astype(np.float32), y=y)
    return path, x, y


def _layers(k3, kind: str):
    L = k3.layers
    return {
        "lstm": [L.Embedding(VOCAB, 16), L.LSTM(32), L.Dropout(0.2)],
        "gru": [L.Embedding(VOCAB, 16), L.GRU(16), L.Dropout(0.2)],
        "bidirectional": [L.Embedding(VOCAB, 16), L.Bidirectional(L.LSTM(8)), L.Dropout(0.2)],
        "conv1d": [L.Embedding(VOCAB, 16), L.Conv1D(16, 5, activation="relu"), L.GlobalMaxPooling1D(), L.Dropout(0.2)],
    }[kind]


@pytest.fixture(scope="module")
def user_model(k3, tokens, tmp_path_factory):
    """``user_model(kind)``: the saved file of :func:`_user_model`, trained once per module (the export and the
    optimize tests both take the LSTM; neither changes the file)."""
    made = {}

    def get(kind: str):
        if kind not in made:
            made[kind] = _user_model(k3, kind, tokens, tmp_path_factory.mktemp(kind))
        return made[kind]

    return get


def _user_model(k3, kind: str, tokens, folder):
    """Built, trained (1 epoch) and saved the way the Keras docs do it."""
    _, x, y = tokens
    k3.utils.set_random_seed(0)
    model = k3.Sequential(
        [k3.Input((STEPS,), dtype="int32"), *_layers(k3, kind), k3.layers.Dense(3, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = folder / f"{kind}.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("kind", ["lstm", "gru", "bidirectional", "conv1d"])
def test_export_ships_every_format(cli, user_model, tokens, tmp_path, kind):
    model = user_model(kind)
    out = tmp_path / "out"
    int8 = kind == "lstm"  # the int8 variants once (calibrating an unrolled LSTM is what could go wrong)
    done = cli(
        "export",
        model,
        "--data",
        tokens[0],
        "--out",
        out,
        "--quantize",
        "float32,int8-dynamic,int8-full" if int8 else "float32",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "validation.json").read_text())
    assert summary["rejected"] == []
    shipped = {a["export"]["path"] for a in summary["artifacts"] if a["validation"]["passed"]}
    assert shipped == {"model.onnx", "model.tflite"} | (
        {"model_int8-dynamic.onnx", "model_int8-full.tflite"} if int8 else set()
    )
    assert all((out / f).exists() for f in shipped)


def _convlstm_model(tmp_path):
    """A tf_keras ConvLSTM1D: tf2onnx converts its loop, the TFLite converter refuses its TensorList."""
    from deploykit.backend import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Reshape((3, 4, 1)),
            keras.layers.ConvLSTM1D(4, 3),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    path = tmp_path / "convlstm.keras"
    model.save(path)
    return path


def test_export_rejects_the_format_its_converter_refuses(cli, tmp_path):
    out = tmp_path / "out"
    done = cli("export", _convlstm_model(tmp_path), "--out", out)
    assert done.returncode == 0, done.stderr
    assert (out / "model.onnx").exists() and not (out / "model.tflite").exists()
    summary = json.loads((out / "validation.json").read_text())
    [rejected] = summary["rejected"]
    assert rejected["artifact"] == "model.tflite" and "TFLite float32 conversion failed" in rejected["reason"]
    assert "model.tflite" in (out / "validation.md").read_text()
    assert "rejected model.tflite: TFLite float32 conversion failed" in done.stdout


def test_optimize_rejects_the_format_its_converter_refuses(cli, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0))
    out = tmp_path / "out"
    done = cli(
        "optimize",
        _convlstm_model(tmp_path),
        "--data",
        tmp_path / "d.npz",
        "--out",
        out,
        "--no-sparsity",
        "--no-mc",
        "--quantize",
        "float32",
        *LATENCY_REPEATS,
    )
    assert done.returncode == 0, done.stderr
    rows = {a["file"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert rows["model.tflite"]["verdict"] == "rejected"
    assert "TFLite float32 conversion failed" in rows["model.tflite"]["checks"]
    assert rows["model.onnx"]["verdict"] == "pass" and (out / "model.onnx").exists()
    assert not (out / "model.tflite").exists()


def test_optimize_lstm_prunes_exports_and_samples(cli, user_model, tokens, tmp_path):
    model = user_model("lstm")
    out = tmp_path / "out"
    done = cli(
        "optimize",
        model,
        "--data",
        tokens[0],
        "--out",
        out,
        "--sparsity",
        "0.5",
        "--epochs",
        "2",
        "--formats",
        "onnx",
        "--quantize",
        "float32",
        "--max-accuracy-drop",
        "0.05",
        *LATENCY_REPEATS,
    )  # TFLite: the export test
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    rows = {a["file"]: a for a in report["artifacts"]}
    assert {"model.onnx", "model_mc.onnx"} <= {f for f, a in rows.items() if a["verdict"] == "pass"}
    steps = {s["step"]: s for s in report["steps"]}
    sparsity = next(s for name, s in steps.items() if name.startswith("sparsity"))
    pruned = {r["layer"] for r in report["layer_sparsity"] if r["stage"] == "after sparsity" and r["sparsity"] > 0.4}
    if sparsity["status"] == "done":
        assert "lstm" in " ".join(pruned)  # TF-MOT pruned the LSTM cell's kernel
    assert steps["mc dropout"]["status"] == "done"
    import onnxruntime as ort

    mc = ort.InferenceSession(str(out / "model_mc.onnx"))
    x = tokens[1][:8].astype(np.float32)
    mean = mc.run(["mean"], {"input": x})[0]
    assert mean.shape == (8, 3) and np.allclose(mean.sum(axis=1), 1, atol=1e-5)


def _mc_dropout_model(k3, tmp_path):
    """Chapter 11's MCDropout, written as the book writes it, registered as Keras 3 users register custom classes."""

    @k3.saving.register_keras_serializable(package="SequenceTest")
    class MCDropout(k3.layers.Dropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    np.savez(tmp_path / "tab.npz", x=x, y=y)
    k3.utils.set_random_seed(0)
    model = k3.Sequential(
        [
            k3.Input((8,)),
            k3.layers.Dense(32, activation="relu"),
            MCDropout(0.3),
            k3.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "mc.keras")
    return tmp_path / "mc.keras", tmp_path / "tab.npz"


def test_mc_and_optimize_take_the_chapters_mc_dropout(cli, k3, tmp_path):
    model, data = _mc_dropout_model(k3, tmp_path)
    done = cli("mc", model, "--data", data, "--out", tmp_path / "mc")
    assert done.returncode == 0, done.stderr
    assert "assumed 'mc_dropout' (SequenceTest>MCDropout) as Dropout" in done.stderr
    assert (tmp_path / "mc" / "model_mc.onnx").exists()
    out = tmp_path / "out"
    done = cli(
        "optimize",
        model,
        "--data",
        data,
        "--out",
        out,
        "--no-sparsity",
        "--formats",
        "onnx",
        "--quantize",
        "float32",
        *LATENCY_REPEATS,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert "MCDropout" in report["model"]["assumed"] and report["model"]["assumed"] in report["notes"]
    assert "assumed 'mc_dropout'" in (out / "report.md").read_text()
    rows = {a["file"]: a for a in report["artifacts"]}
    assert rows["model.onnx"]["verdict"] == "pass"
    # the MC model of the chapter's class is built; it ships exactly when within the budget (a 2-epoch model's
    # MC mean lands near the one-point edge, so training noise decides which side)
    mc = rows["model_mc.onnx"]
    assert mc["verdict"] == ("pass" if ships_by_budget(mc, report) else "rejected")


def test_optimize_takes_the_keras_io_bidirectional_lstm_as_published(cli, k3, tokens, tmp_path):
    """keras.io's bidirectional_lstm_imdb: any length of int ids, two stacked Bidirectional LSTMs (Keras sets
    ``zero_output_for_mask`` on the ones returning sequences: refused before), a sigmoid head. Its one prunable
    layer is the output layer: the sparsity step is skipped with its reason (the search aborted the run), and the
    file shipped computes what Keras 3 computes."""
    import onnxruntime as ort

    _, x, y = tokens
    k3.utils.set_random_seed(0)
    inputs = k3.Input(shape=(None,), dtype="int32")
    h = k3.layers.Embedding(VOCAB, 8)(inputs)
    h = k3.layers.Bidirectional(k3.layers.LSTM(6, return_sequences=True))(h)
    h = k3.layers.Bidirectional(k3.layers.LSTM(6))(h)
    model = k3.Model(inputs, k3.layers.Dense(1, activation="sigmoid")(h))
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    binary = (y > 0).astype(np.int64)
    model.fit(x, binary, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "bilstm.keras")
    np.savez(tmp_path / "binary.npz", x=x.astype(np.float32), y=binary)
    out = tmp_path / "out"  # no temperature: a folded T would change the outputs compared below
    done = cli("optimize", tmp_path / "bilstm.keras", "--data", tmp_path / "binary.npz", "--out", out,
               "--formats", "onnx", "--quantize", "float32", "--no-mc",
               "--no-temperature", *LATENCY_REPEATS)  # fmt: skip
    assert done.returncode == 0, done.stderr
    steps = {s["step"]: s for s in json.loads((out / "report.json").read_text())["steps"]}
    assert steps["sparsity (prune)"]["status"] == "skipped"
    assert "nothing to prune" in steps["sparsity (prune)"]["reason"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    want = np.asarray(model(x.astype(np.int32), training=False))  # P(class 1): the served [1 - p, p]'s second
    assert got.shape == (len(x), 2) and np.abs(got[:, 1:] - want).max() <= 1e-4


def test_optimize_takes_an_lstm_autoencoder_and_a_one_unit_forecaster_on_whole_number_targets(cli, k3, tmp_path):
    """Two sequence regressors as tutorials build them. An LSTM autoencoder (LSTM, RepeatVector,
    TimeDistributed(Dense)) has no Dense layer or convolution at the top level: the compact step stopped the run
    ("has no Dense layer or convolution"); it is skipped with its reason. keras.io's weather forecaster (LSTM ->
    Dense(1)) on whole-number targets was refused ("data has 10 classes, but model outputs 1"): its labels are read
    as its regression target, and the run says so."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (300, 6, 4)).astype(np.float32)
    L = k3.layers
    k3.utils.set_random_seed(0)
    repeated = [L.RepeatVector(6), L.LSTM(8, return_sequences=True), L.TimeDistributed(L.Dense(4))]
    autoencoder = k3.Sequential([k3.Input((6, 4)), L.LSTM(8), *repeated])
    forecaster = k3.Sequential([k3.Input((6, 4)), L.LSTM(8), L.Dense(1)])
    whole = np.round(x[:, -1, 0] * 9).astype(np.float32)  # 0..9, as whole degrees
    for name, model, y in (("ae", autoencoder, x), ("forecast", forecaster, whole)):
        model.compile("adam", "mse")
        model.fit(x, y, epochs=1, verbose=0)
        model.save(tmp_path / f"{name}.keras")
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        out = tmp_path / f"out_{name}"
        done = cli("optimize", tmp_path / f"{name}.keras", "--data", tmp_path / f"{name}.npz", "--out", out,
                   "--no-sparsity", "--formats", "onnx", "--quantize", "float32", "--no-mc",
                   *LATENCY_REPEATS)  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads((out / "report.json").read_text())
        steps = {s["step"]: s for s in report["steps"]}
        assert report["model"]["task"] == "regression"
        if name == "ae":
            assert steps["compact"]["status"] == "skipped" and "nothing to compact" in steps["compact"]["reason"]
        else:
            assert "read as the regression target of the model's one linear output" in done.stderr
