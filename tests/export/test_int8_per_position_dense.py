"""A Dense layer applied to every position of a sequence or feature map (ConvNeXt's pointwise layers, a Dense after
``return_sequences``, the Keras docs' per-timestep Dense) through the int8 preparation: its rows are its input's last
axis, sampled like a conv's receptive fields. The preparation used to flatten each sample into one row and failed
with numpy's shape error, so no int8 file of such a model could be written."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _per_position_model(digits, path):
    """Keras 3, as the docs build it: the 8x8 digits as 8 rows of 8, a Dense applied to each row, then a head."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Reshape((8, 8)),
            keras.layers.Dense(16, activation="relu"),  # on every row: its kernel reads the last axis only
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=20, verbose=0)
    model.save(path)
    return model


def test_the_rows_of_a_per_position_dense_are_its_positions():
    """``layer_rows`` gives a per-position Dense (rank-3 and rank-4 inputs) rows of its last axis, at most the
    layer's sample count, drawn from its positions; a plain Dense keeps one row per sample."""
    from deploykit.core.graph import LayerSpec
    from deploykit.export.int8_clip import layer_rows, patch_count

    rng = np.random.default_rng(0)
    spec = LayerSpec("Dense", {"name": "d", "units": 4}, [rng.normal(size=(6, 4)).astype(np.float32)])
    calibration = np.zeros((40, 1), np.float32)  # only its length matters here
    for shape in ((40, 7, 6), (40, 5, 5, 6)):
        h = rng.normal(size=shape)
        ((rows, scale),) = layer_rows([spec], lambda part, h=h: [h[: len(part)]], calibration, batch=40)
        assert rows.shape == (min(patch_count(spec), int(np.prod(shape[:-1]))), 6)
        positions = {tuple(r) for r in h.reshape(-1, 6)}
        assert all(tuple(r) in positions for r in rows)  # each row is one position's features
    h = rng.normal(size=(40, 6))
    ((rows, _),) = layer_rows([spec], lambda part: [h[: len(part)]], calibration, batch=40)
    np.testing.assert_array_equal(rows, h)


@pytest.mark.slow
def test_a_per_position_dense_model_exports_int8_in_both_runtimes(tmp_path, cli, digits):
    """``deploykit export`` writes its int8-static ONNX and int8-full TFLite files, each within the tolerance."""
    _per_position_model(digits, tmp_path / "rows.keras")
    out = tmp_path / "out"
    result = cli(
        "export", str(tmp_path / "rows.keras"), "--quantize", "int8-static,int8-full", "--data", "digits",
        "--out", str(out), "--repeats", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    checks = [a["validation"] for a in json.loads((out / "validation.json").read_text())["artifacts"]]
    assert sorted(c["artifact"] for c in checks) == ["model_int8-full.tflite", "model_int8-static.onnx"]
    assert all(c["passed"] and c["agreement"] >= 0.95 for c in checks)
