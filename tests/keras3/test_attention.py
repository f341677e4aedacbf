"""Transformer blocks as keras.io publishes them: ``MultiHeadAttention(...)(x, x)`` in a Keras 3 file.

keras.io's "Timeseries classification with a Transformer model" was refused ("called with [...]; deploykit
reads plain calls"): attention takes its query and value as separate tensors. It is read as a node of two
inputs (deploykit.core.graph), rebuilt in tf_keras with its weights in order (its four projections name
theirs alike), saved back as Keras 3, and exported: ONNX (Einsum; int8-static whose shape pre-processing
onnxruntime cannot finish symbolically retries with ONNX's own) and TFLite compute what Keras 3 computes.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.io.models import load_model


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    return keras


def _transformer(k3, blocks: int = 2, steps: int = 16, features: int = 4):
    """keras.io's build_model (timeseries_classification_transformer), smaller: head_size 8, 2 heads, ff_dim 8."""
    layers = k3.layers

    def transformer_encoder(inputs, head_size, num_heads, ff_dim, dropout=0):
        x = layers.MultiHeadAttention(key_dim=head_size, num_heads=num_heads, dropout=dropout)(inputs, inputs)
        x = layers.Dropout(dropout)(x)
        x = layers.LayerNormalization(epsilon=1e-6)(x)
        res = x + inputs
        x = layers.Conv1D(filters=ff_dim, kernel_size=1, activation="relu")(res)
        x = layers.Dropout(dropout)(x)
        x = layers.Conv1D(filters=inputs.shape[-1], kernel_size=1)(x)
        x = layers.LayerNormalization(epsilon=1e-6)(x)
        return x + res

    inputs = k3.Input(shape=(steps, features))
    x = inputs
    for _ in range(blocks):
        x = transformer_encoder(x, 8, 2, 8, 0.25)
    x = layers.GlobalAveragePooling1D(data_format="channels_last")(x)
    x = layers.Dropout(0.4)(layers.Dense(16, activation="relu")(x))
    return k3.Model(inputs, layers.Dense(3, activation="softmax")(x))


def test_a_keras_io_transformer_imports_and_saves_back_as_keras_3(k3, tmp_path):
    from deploykit.keras3.convert import save_keras3

    model = _transformer(k3)
    model.save(tmp_path / "transformer.keras")
    imported = load_model(tmp_path / "transformer.keras")  # checked against Keras 3 within 1e-5 on load
    x = np.random.default_rng(0).normal(size=(16, 16, 4)).astype(np.float32)
    assert np.abs(imported(x, training=False).numpy() - np.asarray(model(x, training=False))).max() <= 1e-5
    attention = [layer for layer in imported.layers if type(layer).__name__ == "MultiHeadAttention"]
    assert len(attention) == 2 and all(len(layer.weights) == 8 for layer in attention)
    save_keras3(imported, tmp_path / "back.keras")
    back = k3.saving.load_model(tmp_path / "back.keras")
    assert np.abs(np.asarray(back(x, training=False)) - np.asarray(model(x, training=False))).max() <= 1e-5


def test_attention_called_with_a_different_key_or_options_is_read_or_refused_by_name(k3, tmp_path):
    from deploykit.errors import UnsupportedLayerError

    query, memory = k3.Input((4, 3)), k3.Input((5, 3))
    cross = k3.layers.MultiHeadAttention(num_heads=2, key_dim=2, name="cross")(query, memory, memory)
    two = k3.Model([query, memory], k3.layers.Dense(2)(k3.layers.Flatten()(cross)))
    two.save(tmp_path / "cross.keras")
    xs = [np.random.default_rng(1).normal(size=(8, *s)).astype(np.float32) for s in ((4, 3), (5, 3))]
    loaded = load_model(tmp_path / "cross.keras")  # two inputs: packed into one (deploykit.core.multi_io)
    packed = np.concatenate([a.reshape(len(a), -1) for a in xs], axis=1)
    assert np.abs(loaded(packed).numpy() - np.asarray(two(xs))).max() <= 1e-5
    x = k3.Input((4, 3))
    causal = k3.layers.MultiHeadAttention(num_heads=2, key_dim=2, name="causal")(x, x, use_causal_mask=True)
    k3.Model(x, causal).save(tmp_path / "causal.keras")
    with pytest.raises(UnsupportedLayerError, match="'causal'.*use_causal_mask"):
        load_model(tmp_path / "causal.keras")


@pytest.mark.slow
def test_an_exported_transformer_computes_what_keras_3_computes(k3, tmp_path, cli, monkeypatch):
    import onnxruntime as ort

    from deploykit.export.runtimes import open_runner

    rng = np.random.default_rng(2)
    x = rng.normal(size=(240, 16, 4)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1) > 0).astype(np.int64) + (x[:, :, 1].mean(axis=1) > 0.2)
    model = _transformer(k3)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, verbose=0)
    model.save(tmp_path / "transformer.keras")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    out = tmp_path / "out"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # onnxruntime saves a temporary file where it runs when its inference fails
    # held here: float32 computes what Keras 3 does, and int8-static's path through an attention graph completes.
    # Not held: int8's accuracy on this 3-epoch model's 36 validation rows (0.25 vs 0.22 on one machine: one row),
    # which tests/export holds on models trained for it; a loose drop keeps that row out of this test.
    done = cli("export", tmp_path / "transformer.keras", "--data", tmp_path / "data.npz",
               "--quantize", "float32,int8-static", "--max-accuracy-drop", "0.5", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    want = np.asarray(model(x, training=False))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(open_runner(out / "model.tflite").predict(x) - want).max() <= 1e-4
    assert (out / "model_int8-static.onnx").is_file()
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing left where the command ran
