"""Issue 22: a classifier artifact's NLL in every report row, and an exported file held to ``max_nll_increase``;
int8-full TFLite keeps its softmax in float (an int8 softmax rounds probabilities to zero)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.pipeline.nll import FLOOR, export_check, losses, nll, relative
from tests.helpers import nll_within, ships_by_budget


def _probs(p_true: np.ndarray, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Outputs giving each row's label (class 0) probability ``p_true``, the rest spread evenly."""
    rows = len(p_true)
    out = np.repeat(((1 - p_true) / (classes - 1))[:, None], classes, axis=1)
    out[:, 0] = p_true
    return out, np.zeros(rows, np.int64)


def test_nll_floors_an_exact_zero_and_is_undefined_for_a_regressor():
    probs, y = _probs(np.array([0.5, 0.0]))
    assert nll(probs, y) == pytest.approx((-np.log(0.5) - np.log(FLOOR)) / 2)
    assert losses(np.zeros((4, 1)), np.array([0.5, 1.0, 2.0, 3.0])) is None  # float targets: no NLL
    assert relative(1.02, 1.0) == pytest.approx(0.02) and relative(None, 1.0) is None


def test_validation_decides_by_the_point_estimate():
    source, y = _probs(np.full(300, 0.8))
    slightly, _ = _probs(np.full(300, 0.8**1.01))  # NLL +1%
    clearly, _ = _probs(np.full(300, 0.8**1.05))  # NLL +5%
    found, missed = export_check("validation", slightly, source, y, 0.02)
    assert missed == [] and found["nll_export_change"] == pytest.approx(0.01)
    found, missed = export_check("validation", clearly, source, y, 0.02)
    assert len(missed) == 1 and missed[0].check == "validation NLL increase vs the model it was exported from"
    assert "(+5.0%)" in missed[0].detail and missed[0].measured == pytest.approx(0.05)


def test_test_confirms_unless_the_interval_lies_beyond_the_limit():
    """One row of 300 turning confident and wrong raises the mean NLL by far more than 2% but the interval,
    which resamples that row in or out, reaches below the limit: shown, not a test miss; every row worse is."""
    p = np.full(300, 0.9)
    source, y = _probs(p)
    one_row = p.copy()
    one_row[0] = 1e-3
    found, missed = export_check("test", _probs(one_row)[0], source, y, 0.02, confirming=True)
    assert found["nll_export_change"] > 0.02 and found["nll_export_ci95"][0] <= 0.02 and missed == []
    every_row, _ = _probs(np.full(300, 0.85))
    found, missed = export_check("test", every_row, source, y, 0.02, confirming=True)
    assert found["nll_export_ci95"][0] > 0.02 and missed[0].check.startswith("test miss: NLL increase")


def _keras3_digits_model(digits, path, epochs: int = 3):
    """A tutorial-style Keras 3 MLP (softmax head) trained briefly, saved with ``model.save``."""
    import keras as k3

    k3.utils.set_random_seed(0)
    model = k3.Sequential(
        [
            k3.Input(digits.input_shape),
            k3.layers.Dense(32, activation="relu"),
            k3.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train / 16, digits.y_train, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return model


@pytest.mark.slow
def test_int8_full_tflite_keeps_its_softmax_in_float(digits, tmp_path):
    """The body stays int8 (int8 kernels of the Dense layers), the softmax runs on dequantized logits: no
    probability is rounded to an exact 0 as an int8 output with 1/256 steps does; int8_io keeps the int8 output
    asked for."""
    from ai_edge_litert.interpreter import Interpreter

    from deploykit.export import export_tflite
    from deploykit.export.runtimes import open_runner, predict_batches

    model = _keras3_digits_model(digits, tmp_path / "m.keras")
    data = (digits.x_train / 16, digits.y_train)
    record = export_tflite(tmp_path / "m.keras", tmp_path / "f.tflite", "int8-full", data)
    interpreter = Interpreter(model_path=str(record.path))
    ops = interpreter._get_ops_details()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    out = interpreter.get_output_details()[0]
    last = next(op for op in ops if out["index"] in op["outputs"])
    assert last["op_name"] == "SOFTMAX" and tensors[last["inputs"][0]]["dtype"] == np.float32
    assert out["dtype"] == np.float32
    dense = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"]
    assert len(dense) == 2 and all(tensors[op["inputs"][1]]["dtype"] == np.int8 for op in dense)
    probs = predict_batches(open_runner(record.path).predict, digits.x_test / 16)
    assert (probs > 0).all()
    assert np.abs(probs - np.asarray(model(digits.x_test / 16))).max() < 0.5  # the same model, quantized
    io = export_tflite(tmp_path / "m.keras", tmp_path / "io.tflite", "int8-full", data, int8_io=True)
    assert Interpreter(model_path=str(io.path)).get_output_details()[0]["dtype"] == np.int8


@pytest.mark.slow
def test_every_classifier_row_carries_its_nll_and_exported_files_are_held_to_the_limit(cli, digits, tmp_path):
    """A Keras 3 model given with x/y: each row's NLL and its change vs the original, model.tflite's NLL as LiteRT
    gives it, and a shipped exported file within max_nll_increase by the rule (tests.helpers.nll_within)."""
    from deploykit.export.runtimes import open_runner, predict_batches

    _keras3_digits_model(digits, tmp_path / "m.keras")
    x = np.concatenate([digits.x_train, digits.x_val, digits.x_test]) / 16
    y = np.concatenate([digits.y_train, digits.y_val, digits.y_test])
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=y)
    out = tmp_path / "out"
    done = cli(
        "optimize", tmp_path / "m.keras", "--data", tmp_path / "d.npz", "--out", out, "--no-sparsity", "--no-mc",
        "--formats", "onnx,tflite", "--quantize", "float32,int8-dynamic,int8-full", "--latency-repeats", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["budget"]["max_nll_increase"] == 0.02
    rows = {r["file"]: r for r in report["artifacts"]}
    assert rows["original.keras"]["nll_change"] == 0.0
    from deploykit.data.dataset import load_dataset

    data = load_dataset(str(tmp_path / "d.npz"))
    probs = predict_batches(open_runner(out / "model.tflite").predict, data.x_test)
    assert rows["model.tflite"]["nll"] == pytest.approx(nll(probs, data.y_test), rel=1e-6)
    assert rows["model.tflite"]["nll_change"] == pytest.approx(
        rows["model.tflite"]["nll"] / rows["original.keras"]["nll"] - 1, abs=1e-9
    )
    for name in ("model.onnx", "model.tflite", "model_int8-dynamic.onnx", "model_int8-full.tflite"):
        row = rows[name]
        assert row["validation"]["nll_export_change"] is not None
        assert row["verdict"] == ("pass" if ships_by_budget(row, report) else "rejected"), row
        if row["verdict"] == "pass":
            assert row["nll_export_ci95"][0] <= row["nll_export_change"] <= row["nll_export_ci95"][1]
            assert row["nll_ci95"][0] <= row["nll_change"] <= row["nll_ci95"][1] and row["nll_change"] <= 0.02
            assert nll_within(row, report["budget"])
        elif not nll_within(row, report["budget"]):
            over_user = max(row.get("nll_change") or 0.0, row["validation"].get("nll_change") or 0.0) > 0.02
            reason = "vs the user's model" if over_user else "vs the model it was exported from"
            assert f"NLL increase {reason}" in row["checks"]
    assert abs(rows["model.tflite"]["nll_export_change"]) < 1e-4  # float32: the same probabilities
    keras = rows["model.keras"]  # held to the run's NLL budget like every shipped file
    assert keras["verdict"] == ("pass" if ships_by_budget(keras, report) else "rejected"), keras
    assert keras["nll_ci95"][0] <= keras["nll_change"] <= keras["nll_ci95"][1]
