"""Issue 22: one calibration for every artifact. The temperature is folded into the model itself, so one run's
model.keras, model.onnx and model.tflite give the same probabilities; it is kept only when it generalises."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.uncertainty.temperature import scale_probs


def _tf_keras_head(activation_layer: bool, logits: bool = False):
    from deploykit.backend import keras, set_seed

    set_seed(0)
    layers = [keras.Input((12,)), keras.layers.Dense(16, activation="relu")]
    if logits:
        layers.append(keras.layers.Dense(4))
    elif activation_layer:
        layers += [keras.layers.Dense(4), keras.layers.Activation("softmax")]
    else:
        layers.append(keras.layers.Dense(4, activation="softmax"))
    return keras.Sequential(layers)


@pytest.mark.parametrize(("activation_layer", "logits"), [(False, False), (True, False), (False, True)])
def test_fold_temperature_scales_the_probabilities_exactly(activation_layer, logits):
    from deploykit.core.evaluate import outputs, softmax
    from deploykit.pipeline.calibrate import fold_temperature

    model = _tf_keras_head(activation_layer, logits)
    x = np.random.default_rng(1).normal(size=(64, 12)).astype(np.float32)
    folded = fold_temperature(model, 2.5)
    raw, new = outputs(model, x), outputs(folded, x)
    if logits:
        np.testing.assert_allclose(new, raw / 2.5, rtol=1e-5, atol=1e-6)
        raw, new = softmax(raw), softmax(new)
    np.testing.assert_allclose(new, scale_probs(raw, 2.5), atol=1e-6)
    assert np.array_equal(new.argmax(1), raw.argmax(1))  # a temperature never changes the predicted class
    np.testing.assert_array_equal(outputs(model, x), raw if not logits else outputs(model, x))  # the input untouched


def test_the_folded_temperature_is_recorded_exactly_in_the_steps():
    """``temperature(T)`` in the artifacts' steps is the T folded, to the last digit: a reader who tempers the user's
    outputs by it gets ``model.keras``'s outputs (issue 20's check). T rounded to 4 digits (0.4541 for 0.45412...)
    moved an underconfident EfficientNetB0's tempered probabilities by 3e-5."""
    from types import SimpleNamespace

    from deploykit.backend import keras, set_seed
    from deploykit.core.evaluate import outputs
    from deploykit.core.task import OutputKind, Task
    from deploykit.pipeline.calibrate import temperature_step

    set_seed(0)
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(4, activation="softmax")])
    kernel, bias = model.get_weights()
    x = rng.normal(size=(1200, 12)).astype(np.float32)
    y = (x @ kernel + bias + rng.gumbel(size=(len(x), 4)) * 0.3).argmax(1)  # the model's logits decide, mostly
    model.set_weights([kernel * np.float32(0.3), bias * np.float32(0.3)])  # underconfident: a kept T well below 1
    data = SimpleNamespace(x_val=x[:600], y_val=y[:600], x_test=x[600:], y_test=y[600:])
    ctx = SimpleNamespace(
        config=SimpleNamespace(export=SimpleNamespace(temperature=True)),
        task=Task.CLASSIFICATION,
        data=data,
        kind=OutputKind.PROBABILITIES,
        say=lambda line: None,
    )
    out = temperature_step(model, ctx)
    decision = out.record.detail
    assert decision.kept and decision.value < 0.9, decision
    (applied,) = out.applied
    recorded = float(applied[len("temperature(") : -1])
    assert recorded == decision.value, (applied, decision.value)
    tempered = scale_probs(outputs(model, data.x_test), recorded)  # what a reader of the steps computes
    assert np.abs(outputs(out.model, data.x_test) - tempered).max() <= 1e-6


def test_a_head_without_an_affine_layer_is_refused():
    from deploykit.backend import keras
    from deploykit.errors import UnsupportedLayerError
    from deploykit.pipeline.calibrate import fold_temperature

    model = keras.Sequential([keras.Input((4,)), keras.layers.Activation("softmax")])
    with pytest.raises(UnsupportedLayerError, match="folded into the head.s last Dense"):
        fold_temperature(model, 2.0)


def _overconfident_keras3(path):
    """A Keras 3 CNN trained 2 epochs on digits, its last layer's weights multiplied by 10: overconfident, so a
    temperature helps on held-out rows (what the pipeline's cross-validated check must find)."""
    import keras

    from deploykit.data.dataset import load_dataset

    keras.utils.set_random_seed(0)
    d = load_dataset("digits")
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Reshape((8, 8, 1)),
            keras.layers.Rescaling(1 / 16),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(d.x_train, d.y_train, epochs=2, batch_size=32, verbose=0)
    last = model.layers[-1]
    last.set_weights([w * 10 for w in last.get_weights()])
    model.save(path)
    return d


@pytest.mark.slow
def test_one_runs_keras_onnx_and_tflite_agree_after_calibration(tmp_path, capsys):
    import keras

    from deploykit.cli.main import main
    from deploykit.export.runtimes import open_runner, predict_batches

    data = _overconfident_keras3(tmp_path / "cnn.keras")
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
            "onnx,tflite",
            "--quantize",
            "float32",
            "--no-mc",
            "--latency-repeats",  # no latency is read here
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["steps"] if s["step"] == "temperature")
    assert step["detail"]["kept"] and step["detail"]["value"] != pytest.approx(1.0), step  # T kept, with its figures
    assert "cross-validated validation NLL" in captured.err  # the decision on the console line
    keras_probs = np.asarray(keras.saving.load_model(out / "model.keras")(data.x_test))  # the user's framework
    for file in ("model.onnx", "model.tflite"):
        probs = predict_batches(open_runner(out / file).predict, data.x_test)
        assert np.abs(probs - keras_probs).max() <= 1e-4, file
    original = np.asarray(keras.saving.load_model(tmp_path / "cnn.keras")(data.x_test))
    np.testing.assert_allclose(keras_probs, scale_probs(original, step["detail"]["value"]), atol=1e-4)
