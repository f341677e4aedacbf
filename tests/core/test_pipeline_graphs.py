"""The pipeline on models beyond dense chains: a layer outside the table, a Keras 3 CNN in and out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.cli.main import main
from tests.helpers import ships_by_budget

pytestmark = pytest.mark.slow  # each test trains a model and runs optimize


def _steps(out) -> dict[str, tuple[str, str]]:
    report = json.loads((out / "report.json").read_text())
    return {s["step"]: (s["status"], s["reason"]) for s in report["steps"]}


@pytest.mark.slow
def test_a_layer_outside_the_table_is_exported_and_the_other_steps_skip(digits, tmp_path, capsys):
    from deploykit.backend import keras, set_seed
    from deploykit.io.models import save_model

    set_seed(0)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((64,)),
            L.Reshape((8, 8)),
            L.UpSampling1D(2, name="up"),  # outside the table (Permute was, until the MC graph emitted it)
            L.Flatten(),
            L.Dense(32, activation="relu"),
            L.Dropout(0.2),
            L.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=20, verbose=0)
    path = save_model(model, tmp_path / "upsampling.keras")
    out = tmp_path / "out"
    code = main(
        [
            "optimize",
            str(path),
            "--data",
            "digits",
            "--out",
            str(out),
            "--no-sparsity",
            "--formats",
            "onnx,tflite",
            "--quantize",
            "float32,int8-dynamic,int8-full",
            "--samples",
            "5",
            "--latency-repeats",  # no latency is read here
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    steps = _steps(out)
    assert steps["mc dropout"][0] == "skipped" and "'up' of type UpSampling1D" in steps["mc dropout"][1]
    for artifact in ("model.onnx", "model.tflite"):  # float32 is exact: it always ships
        assert (out / artifact).exists()
    # int8 ships exactly when it is within the budget (training noise decides that on a 20-epoch model): the
    # layer outside the table never stops an export, and a rejected file is not left behind
    report = json.loads((out / "report.json").read_text())
    rows = {r["file"]: r for r in report["artifacts"]}
    for artifact in ("model_int8-dynamic.onnx", "model_int8-full.tflite"):
        within = ships_by_budget(rows[artifact], report)
        assert rows[artifact]["verdict"] == ("pass" if within else "rejected")
        assert (out / artifact).exists() == within
    assert all(status == "done" for step, (status, _) in steps.items() if step.startswith("export"))


def _keras3_cnn_file(digits, path):
    """A Keras 3 CNN (Conv2D + BN + ReLU, MaxPooling2D, GlobalAveragePooling2D, Dropout, Dense), trained briefly."""
    import keras as k3

    k3.utils.set_random_seed(0)
    L = k3.layers
    model = k3.Sequential(
        [
            k3.Input((64,)),
            L.Reshape((8, 8, 1)),
            L.Conv2D(16, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(16, 3, padding="same", activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dropout(0.2),
            L.Dense(10, activation="softmax"),
        ]
    )
    model.compile(k3.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=30, batch_size=32, verbose=0)
    model.save(path)
    return model


@pytest.mark.slow
def test_keras3_cnn_in_keras3_files_out(digits, tmp_path, capsys):
    import onnx

    from deploykit.io.models import read_model_file
    from tests.keras3.test_keras3 import _load_in_keras3_subprocess

    source = _keras3_cnn_file(digits, tmp_path / "cnn.keras")
    out = tmp_path / "out"
    code = main(
        [
            "optimize",
            str(tmp_path / "cnn.keras"),
            "--data",
            "digits",
            "--out",
            str(out),
            "--no-sparsity",
            "--formats",
            "onnx",
            "--quantize",
            "float32",
            "--samples",
            "10",
            "--no-temperature",  # model.keras is then the user's function exactly (a kept T is folded into it)
            "--latency-repeats",  # no latency is read here
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    steps = _steps(out)
    assert steps["fold"][0] == "done" and "batch_normalization" in steps["fold"][1]
    assert steps["mc dropout"][0] == "done"
    assert not [n for n in onnx.load(out / "model.onnx").graph.node if "BatchNorm" in n.op_type]
    x = digits.x_test[:32]
    expected = np.asarray(source(x, training=False))
    for name in ("model.keras", "original.keras"):
        assert read_model_file(out / name).is_keras3
        assert np.abs(_load_in_keras3_subprocess(out / name, x) - expected).max() <= 1e-5
