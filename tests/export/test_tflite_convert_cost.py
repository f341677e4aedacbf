"""The TFLite export's cost follows the model's ops, not tf_keras's SavedModel serialization of its layers.

The converter lowers the signature function through a SavedModel of the object it is handed. Handed the tf_keras
model, that save traced every layer's call functions (tf_keras ``wrap_layer_functions``): most of a
keras.applications model's conversion time. deploykit hands it a bare module of the variables instead
(``tflite_export.variables_only``); the flatbuffer must be the one the model-backed conversion made.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # Keras 3 builds and conversions: seconds each


@pytest.fixture(scope="module")
def saved_keras3(tmp_path_factory):
    """A small Keras 3 convnet with BatchNorm and a hard-swish, as keras.applications builds them, saved."""
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as deploykit does)

    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("hard_swish")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    path = tmp_path_factory.mktemp("k3") / "model.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def test_tflite_export_does_not_serialize_the_keras_layers(saved_keras3, tmp_path, monkeypatch):
    from tf_keras.src.saving.legacy.saved_model import save_impl

    from deploykit import load_model
    from deploykit.export import export_tflite
    from deploykit.export.runtimes import TfliteRunner

    traced = []
    original = save_impl.wrap_layer_functions
    monkeypatch.setattr(save_impl, "wrap_layer_functions", lambda *a, **k: traced.append(a[0]) or original(*a, **k))
    model = load_model(saved_keras3)
    export_tflite(model, tmp_path / "model.tflite")
    assert traced == [], f"the converter serialized {len(traced)} Keras layers"

    x = np.random.default_rng(0).standard_normal((8, 12, 12, 3)).astype(np.float32)
    got = TfliteRunner(tmp_path / "model.tflite").predict(x)
    np.testing.assert_allclose(got, model(x, training=False).numpy(), atol=1e-5)


def test_variables_only_conversion_is_the_model_backed_one(saved_keras3):
    """Same bytes as the converter's own path with the model as its trackable object (what deploykit used to do)."""
    from deploykit import load_model
    from deploykit.backend import tf
    from deploykit.export.tflite_export import variables_only

    model = load_model(saved_keras3)
    fn = tf.function(lambda x: {"probabilities": model(x, training=False)})
    concrete = fn.get_concrete_function(tf.TensorSpec((None, 12, 12, 3), tf.float32, name="input"))
    light = tf.lite.TFLiteConverter.from_concrete_functions([concrete], variables_only(model)).convert()
    backed = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model).convert()
    assert light == backed
    assert len(variables_only(model).kept) == len(model.variables)
