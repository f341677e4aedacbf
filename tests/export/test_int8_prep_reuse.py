"""Several int8 variants of one model prepare it once (``int8_prep._LastPrepared``), and only while nothing changed.

The preparation folds BatchNorm and rebuilds the model twice: on a keras.applications network it was half of
each int8 export, paid again by every int8 variant of the same model on the same calibration samples.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # Keras 3 builds and conversions: seconds each


@pytest.fixture(scope="module")
def model_and_x(tmp_path_factory):
    """A small Keras 3 convnet with BatchNorm, saved and imported as deploykit imports a user's file."""
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as deploykit does)
    from deploykit import load_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((10, 10, 2)),
            keras.layers.Conv2D(6, 3, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    path = tmp_path_factory.mktemp("k3") / "model.keras"
    model.save(path)
    x = np.random.default_rng(0).standard_normal((64, 10, 10, 2)).astype(np.float32)
    return load_model(path), x


@pytest.fixture
def prepared_calls(monkeypatch):
    from deploykit.export import int8_prep

    calls = []
    original = int8_prep.prepare_for_int8

    def counting(model, calibration, **options):
        calls.append(options)
        return original(model, calibration, **options)

    monkeypatch.setattr(int8_prep, "prepare_for_int8", counting)
    monkeypatch.setattr(int8_prep, "_LAST_PREPARED", int8_prep._LastPrepared())
    return calls


def test_int8_variants_of_one_model_prepare_it_once(model_and_x, prepared_calls, tmp_path, monkeypatch):
    from deploykit import export_variant
    from deploykit.export import int8_prep
    from deploykit.export.runtimes import OnnxRunner, TfliteRunner

    model, x = model_and_x
    dynamic = export_variant(model, "onnx", "int8-dynamic", tmp_path / "a.onnx", x)
    static = export_variant(model, "onnx", "int8-static", tmp_path / "b.onnx", x)
    full = export_variant(model, "tflite", "int8-full", tmp_path / "c.tflite", x)
    assert len(prepared_calls) == 1
    assert dynamic.preparation == static.preparation == full.preparation  # each record says what was prepared

    # the reused preparation makes the artifacts a fresh one makes
    monkeypatch.setattr(int8_prep, "_LAST_PREPARED", int8_prep._LastPrepared())
    export_variant(model, "tflite", "int8-full", tmp_path / "fresh.tflite", x)
    monkeypatch.setattr(int8_prep, "_LAST_PREPARED", int8_prep._LastPrepared())
    export_variant(model, "onnx", "int8-static", tmp_path / "fresh.onnx", x)
    assert len(prepared_calls) == 3
    np.testing.assert_array_equal(
        TfliteRunner(tmp_path / "c.tflite").predict(x), TfliteRunner(tmp_path / "fresh.tflite").predict(x)
    )
    np.testing.assert_array_equal(
        OnnxRunner(tmp_path / "b.onnx").predict(x), OnnxRunner(tmp_path / "fresh.onnx").predict(x)
    )


def test_changed_weights_or_samples_or_options_prepare_again(model_and_x, prepared_calls):
    from deploykit.export.int8_prep import int8_source

    model, x = model_and_x
    shape = x.shape[1:]
    first, _, _ = int8_source(model, x, True, 32, shape, 0)
    again, _, _ = int8_source(model, x, True, 32, shape, 0)
    assert again is first and len(prepared_calls) == 1
    int8_source(model, x, True, 32, shape, 1)  # other samples
    int8_source(model, x, True, 32, shape, 1, fold=False)  # another option
    assert len(prepared_calls) == 3
    weights = model.get_weights()
    try:
        model.set_weights([w * 1.5 for w in weights])  # the same model object, changed in place
        changed, _, _ = int8_source(model, x, True, 32, shape, 1, fold=False)
    finally:
        model.set_weights(weights)
    assert len(prepared_calls) == 4 and changed is not first
