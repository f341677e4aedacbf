"""The fallback end to end: a run whose compressed model misses the budget on test by construction ships the user's
own model, folded, as ``original.onnx`` / ``original.tflite``, loadable in onnxruntime and LiteRT, reproducing the
user's model, named in the report, served as ``recommended``; a run whose compressed model ships does not fall back.

The test miss is built, not trained: a Keras 3 model saved as users save it, whose test rows are classified only
through the smallest weights of its hidden layer, and whose training and validation rows never touch them. Pruning
that layer to 75 % removes exactly those weights (27 of 36: the 18 zeros and the 9 small ones), so the compressed
model is as good as the original on validation and at chance on test, whatever the fine-tuning does (the small
weights get no gradient: their inputs are zero on every training row).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import ships_by_budget

pytestmark = pytest.mark.slow  # two small optimize runs (one with a 2-epoch pruning fine-tune)

CLASSES = 3


def _rows(n: int, seen: bool, rng) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of 6 features: class ``i`` lights feature ``i`` (``seen``: training and validation rows) or feature
    ``3 + i`` a thousand times brighter (test rows), by a factor in [0.9, 1.1]."""
    y = np.arange(n) % CLASSES
    x = np.zeros((n, 2 * CLASSES), np.float32)
    scale = rng.uniform(0.9, 1.1, n).astype(np.float32)
    x[np.arange(n), y + (0 if seen else CLASSES)] = scale * (1.0 if seen else 1000.0)
    return x, y.astype(np.int64)


def _data():
    from deploykit.data.dataset import Dataset

    rng = np.random.default_rng(0)
    (xt, yt), (xv, yv), (xs, ys) = _rows(240, True, rng), _rows(150, True, rng), _rows(150, False, rng)
    return Dataset("lit", xt, yt, xv, yv, xs, ys, tuple(f"c{i}" for i in range(CLASSES)))


def _model(path, dropout: float = 0.0):
    """Dense(6) -> BatchNorm -> ReLU (-> Dropout) -> Dense(3, softmax), weights set by hand: units 0-2 read the seen
    features (weights 1.0 / 0.5), units 3-5 the test features (weights 0.001 / 0.0005); BatchNorm makes each unit
    fire for its own class only; both halves vote for the same class."""
    import keras

    half = np.full((CLASSES, CLASSES), 0.5, np.float32) + 0.5 * np.eye(CLASSES, dtype=np.float32)
    kernel = np.zeros((2 * CLASSES, 2 * CLASSES), np.float32)
    kernel[:CLASSES, :CLASSES] = half
    kernel[CLASSES:, CLASSES:] = half / 1000
    out = np.vstack([5 * np.eye(CLASSES), 5 * np.eye(CLASSES)]).astype(np.float32)
    model = keras.Sequential(
        [
            keras.Input((2 * CLASSES,)),
            keras.layers.Dense(2 * CLASSES, name="hidden"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            *([keras.layers.Dropout(dropout)] if dropout else []),
            keras.layers.Dense(CLASSES, activation="softmax", name="head"),
        ]
    )
    width = 2 * CLASSES
    model.get_layer("hidden").set_weights([kernel, np.zeros(width, np.float32)])
    model.get_layer("bn").set_weights(
        [np.ones(width), np.zeros(width), np.full(width, 0.75), np.full(width, 0.0625 - 1e-3)]
    )
    model.get_layer("head").set_weights([out, np.zeros(CLASSES, np.float32)])
    model.save(path)
    return model


def _optimize(folder, name, dropout: float = 0.0, **options):
    from deploykit.pipeline import optimize

    data = _data()
    model = _model(folder / f"{name}.keras", dropout)
    x = np.concatenate([data.x_val, data.x_test])
    expected = np.asarray(model(x, training=False))
    assert (expected.argmax(1) == np.concatenate([data.y_val, data.y_test])).all()  # the user's model: 100 %
    options = {"mc": False, **options}
    result = optimize(str(folder / f"{name}.keras"), data, out_dir=folder / name, structured=0, **options)
    return result, json.loads((result.out_dir / "report.json").read_text()), x, expected


@pytest.fixture(scope="module")
def fell_back(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fallback")
    return _optimize(
        folder,
        "pruned",
        sparsity=0.75,
        epochs=2,
        formats="onnx,tflite",
        quantize="float32",
        triton=True,
    )


def test_the_compressed_model_misses_on_test_and_every_file_of_it_is_rejected(fell_back):
    result, report, _, _ = fell_back
    rows = {a["file"]: a for a in report["artifacts"]}
    for file in ("model.onnx", "model.tflite"):
        assert rows[file]["verdict"] == "rejected" and "test miss" in rows[file]["checks"]
        assert rows[file]["validation"]["within"]  # accepted on validation: the miss is on test
        assert not (result.out_dir / file).exists()  # nothing half-written
        assert not ships_by_budget(rows[file], report)


def test_the_users_folded_model_ships_instead_and_reproduces_it(fell_back):
    from ai_edge_litert.interpreter import Interpreter

    from deploykit.export.runtimes import OnnxRunner

    result, report, x, expected = fell_back
    rows = {a["file"]: a for a in report["artifacts"]}
    for file, fmt in (("original.onnx", "onnx"), ("original.tflite", "tflite")):
        row = rows[file]
        assert row["verdict"] == "pass" and row["format"] == fmt and row["quantization"] == "float32"
        assert (
            row["sparsity"] == report["original"]["sparsity"]
            and row["accuracy_change"] == 0.0
            and ships_by_budget(row, report)
        )
        assert (result.out_dir / file).is_file()
    onnx_out = OnnxRunner(result.out_dir / "original.onnx").predict(x)
    np.testing.assert_allclose(onnx_out, expected, atol=1e-5)
    interpreter = Interpreter(model_path=str(result.out_dir / "original.tflite"))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    got = []
    for row in x:
        interpreter.set_tensor(inp["index"], row[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(out["index"])[0])
    np.testing.assert_allclose(np.array(got), expected, atol=1e-5)


def test_the_report_names_the_fallback_and_says_why_the_test_split_does_not_bias_it(fell_back):
    result, report, _, _ = fell_back
    entry = report["fallback"]
    assert entry == result.fallback and entry["formats"] == ["onnx", "tflite"]
    assert entry["shipped"] == ["original.onnx", "original.tflite"] and entry["rejected"] == []
    assert entry["test_miss"] and set(entry["missed"]) == {"model.onnx", "model.tflite"}
    assert "missed the budget on test" in entry["line"] and "original.onnx, original.tflite" in entry["line"]
    assert entry["decided_on"] == "test" and "nothing was selected among candidates" in entry["unbiased"]
    assert report["notes"][0].startswith("fallback: the compressed model missed the budget on test")
    markdown = (result.out_dir / "report.md").read_text()
    assert "**Fallback**" in markdown and "## Fallback: your model folded (BatchNorm)" in markdown
    assert result.failure is None  # something deployable met the budget


def test_serve_and_triton_recommend_the_fallback(fell_back):
    from deploykit.serve.discover import discover_models

    result, report, _, _ = fell_back
    assert report["objective"]["by_format"]["onnx"]["latency"] == "original.onnx"
    models = discover_models(result.out_dir, prefer="latency", warn=lambda line: None)
    assert models["recommended"] == result.out_dir / "original.onnx" and "model" not in models
    assert (result.out_dir / "triton" / "original").is_dir() and (result.out_dir / "triton" / "recommended").is_dir()


def test_a_run_whose_compressed_model_ships_does_not_fall_back(tmp_path):
    """No pruning, no temperature: the chain is the exact fold, so its model.onnx ships and nothing falls back."""
    result, report, _, _ = _optimize(
        tmp_path, "kept", sparsity="none", temperature=False, formats="onnx", quantize="float32"
    )
    row = next(a for a in report["artifacts"] if a["file"] == "model.onnx")
    assert row["verdict"] == "pass" and ships_by_budget(row, report)
    assert report["fallback"] is None and result.fallback is None
    assert not (result.out_dir / "original.onnx").exists()
    assert not any(a["file"].startswith("original.") and a["format"] == "onnx" for a in report["artifacts"])
    step = next(s for s in report["steps"] if s["step"] == "fallback")
    assert step["status"] == "done" and step["reason"].startswith("not needed") and not step["artifacts"]


def test_the_mc_model_is_built_from_the_model_the_onnx_fallback_shipped(tmp_path):
    """The same construction with a Dropout before the head and MC on: the chain's model cannot read the test rows
    (pruning removed exactly those weights), your folded model reads all of them. The MC model is built from the
    one ``original.onnx`` is, so its test accuracy is your model's (100 %), not the rejected chain's."""
    result, report, _, _ = _optimize(
        tmp_path, "mc", dropout=0.2, mc=True, sparsity=0.75, epochs=2, formats="onnx", quantize="float32"
    )
    assert report["fallback"]["shipped"] == ["original.onnx"]
    assert "built from the model the ONNX fallback shipped" in report["fallback"]["uncertainty"]
    rows = {a["file"]: a for a in report["artifacts"]}
    assert rows["model.onnx"]["verdict"] == "rejected" and rows["model.onnx"]["accuracy"] < 0.7  # the chain's
    mc = rows["model_mc.onnx"]
    assert mc["accuracy"] == 1.0 and mc["accuracy_change"] == 0.0  # your model's test rows, all right
    assert mc["sparsity"] == report["original"]["sparsity"]  # measured as your model, not the pruned one
