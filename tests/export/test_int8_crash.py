"""The int8 TFLite of a folded input Normalization must load in LiteRT (issue 11: no crash, ever).

Root cause: a feature that is constant in the training data has std 0, so the
folded Normalization divides its kernel row by Keras' epsilon (1e-7). The
first FULLY_CONNECTED then gets per-channel weight scales up to ~5,800 and a
requantization multiplier near 1e5; XNNPACK rejects multipliers >= 256 and,
with the ELU between the layers, aborts the process with a double free.
``prepare_for_int8`` clips those rows and bounds every multiplier.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deploykit.errors import RuntimeCrashError
from deploykit.export.int8_clip import INT8_LEVELS, MAX_REQUANTIZATION, clip_dense

ROOT = Path(__file__).resolve().parents[2]
FASHION = ROOT.parent / "shared" / "data" / "fashion_mnist_3615.npz"
BOOK_MODEL = ROOT.parent / "shared" / "models" / "book_fashion_bn_dropout.keras"
XNNPACK_LIMIT = 256.0  # XNNPACK refuses a requantization multiplier >= 256


def requantization_multipliers(path) -> list[np.ndarray]:
    """Per FULLY_CONNECTED: input scale x weight scales / output scale, read without the XNNPACK delegate."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    scales = {t["index"]: t["quantization_parameters"]["scales"] for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] == "FULLY_CONNECTED":
            x, w = op["inputs"][:2]
            found.append(scales[x][0] * scales[w] / scales[op["outputs"][0]][0])
    return found


def _spec(kernel: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(
        name="dense",
        config={"use_bias": True, "activation": "linear"},
        weights=[kernel.astype(np.float32), np.zeros(kernel.shape[1], np.float32)],
    )


def test_clipping_reaches_the_ordinary_weights_past_a_row_scaled_by_one_over_epsilon():
    rng = np.random.default_rng(0)
    h = rng.uniform(0, 255, (300, 6))
    h[:, 0] = 0.0  # constant in the calibration data (std 0 -> folded row / 1e-7)
    kernel = rng.normal(0, 0.01, (6, 4))
    kernel[0] = 0.05 / 1e-7
    spec = _spec(kernel)
    clip = clip_dense(spec, h)
    clipped = spec.weights[0]
    assert clip.columns_clipped == 4
    assert np.abs(clipped).max() <= 2 * np.abs(kernel[1:]).max()  # scales follow the ordinary weights
    np.testing.assert_allclose(h @ clipped + spec.weights[1], h @ kernel, atol=0.02 * np.abs(h @ kernel).max())


def test_a_live_near_constant_feature_keeps_its_weight_up_to_the_requantization_bound():
    rng = np.random.default_rng(1)
    h = rng.uniform(0, 1, (300, 5))
    h[:, 0] = 0.0
    h[0, 0] = 1e-5  # moves in one sample only: clipping it costs calibration error, so the search keeps it
    kernel = rng.normal(0, 0.1, (5, 3))
    kernel[0] = 1e6
    spec = _spec(kernel)
    clip = clip_dense(spec, h)
    out = h @ spec.weights[0] + spec.weights[1]
    out_scale = (max(out.max(), 0) - min(out.min(), 0)) / 255
    in_scale = (h.max() - min(h.min(), 0)) / 255
    multiplier = in_scale * np.abs(spec.weights[0]).max(axis=0) / INT8_LEVELS / out_scale
    assert clip.columns_bounded == 3
    assert multiplier.max() <= MAX_REQUANTIZATION
    assert np.abs(spec.weights[0][0]).min() > 100 * np.abs(kernel[1:]).max()  # bounded, not zeroed


def _tiny_elu(first_row: float):
    """4 -> Dense(3) -> ELU -> Dense(2), the first input's kernel row set to ``first_row``."""
    from deploykit.backend import keras

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Activation("elu")(hidden)))
    kernel = np.array([[first_row] * 3, [2, -2, 0], [-2, 2, 0], [0, 0, 1]], np.float32)
    model.layers[1].set_weights([kernel, np.zeros(3, np.float32)])
    model.layers[-1].set_weights([np.array([[-2, 2], [2, -2], [0, 0]], np.float32), np.zeros(2, np.float32)])
    return model  # predicts class 1 when x1 > x2: the labels of _tiny_data


def _tiny_data(tmp_path):
    from deploykit.data.dataset import load_dataset

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 4)).astype(np.float32)
    x[:, 0] = 0.0
    np.savez(tmp_path / "tiny.npz", x=x, y=(x[:, 1] > x[:, 2]).astype(np.int64))
    return load_dataset(tmp_path / "tiny.npz")


@pytest.mark.slow
def test_crash_fixture_rebuilds_from_keras_and_deploykit_writes_it_without_the_crash(tmp_path):
    """Plain TFLiteConverter int8 of the tiny network crashes LiteRT; deploykit's export of it loads."""
    from deploykit.backend import tf
    from deploykit.export import export_tflite, validate

    model, data = _tiny_elu(1e6), _tiny_data(tmp_path)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in data.x_train[:64])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    plain = tmp_path / "plain_int8.tflite"
    plain.write_bytes(converter.convert())
    assert max(m.max() for m in requantization_multipliers(plain)) >= XNNPACK_LIMIT
    with pytest.raises(RuntimeCrashError, match=r"plain_int8\.tflite: LiteRT crashed while loading it \(signal 6"):
        validate(plain, data, model, repeats=1, check=False)

    record = export_tflite(model, tmp_path / "model_int8-full.tflite", "int8-full", representative_data=data)
    assert max(m.max() for m in requantization_multipliers(record.path)) < MAX_REQUANTIZATION
    report = validate(record, data, model, repeats=2, check=False)
    assert report.reference_accuracy >= 0.9, "the tiny network should separate its two classes"
    assert report.accuracy_drop <= 0.05 and report.agreement >= 0.95, report.summary()  # int8 may flip a tie or two


def _book_model(data, seed: int = 0):
    """Chapter 11's Fashion-MNIST network: Normalization adapted on the training split, BN + ELU + Dropout."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    norm = keras.layers.Normalization()
    norm.adapt(data.x_train.reshape(len(data.x_train), -1))
    layers = [keras.layers.Flatten(input_shape=data.input_shape), norm]
    for units in (300, 100):
        layers += [
            keras.layers.Dense(units, use_bias=False, kernel_initializer="he_normal"),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("elu"),
            keras.layers.Dropout(0.2),
        ]
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Nadam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=4, batch_size=32, verbose=0)
    return model


def _assert_int8_tflite_loads_within_budget(model, data, path):
    from deploykit.export import export_tflite, validate

    record = export_tflite(model, path, "int8-full", representative_data=data)
    assert max(m.max() for m in requantization_multipliers(record.path)) < MAX_REQUANTIZATION
    report = validate(record, data, model, repeats=2, check=False)  # a crash would raise RuntimeCrashError
    assert report.accuracy_drop <= 0.01, report.summary()
    assert report.agreement >= 0.97, report.summary()
    return report


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION.is_file(), reason="the Fashion-MNIST sample (../shared/data/fashion_mnist_3615.npz) is absent"
)
def test_the_books_fashion_network_trained_here_exports_to_int8_tflite_without_a_crash(tmp_path):
    from deploykit.data.dataset import load_dataset

    data = load_dataset(FASHION)
    flat = data.x_train.reshape(len(data.x_train), -1)
    assert np.any(flat.std(axis=0) == 0), "the sample no longer has a constant pixel: this test lost its trigger"
    model = _book_model(data)
    _assert_int8_tflite_loads_within_budget(model, data, tmp_path / "model_int8-full.tflite")


@pytest.mark.slow
@pytest.mark.skipif(
    not (FASHION.is_file() and BOOK_MODEL.is_file()),
    reason="the shared book model or Fashion sample (../shared/models, ../shared/data) is absent",
)
def test_the_shared_book_model_that_crashed_every_time_exports_to_int8_tflite(tmp_path):
    from deploykit.data.dataset import load_dataset
    from deploykit.io.models import load_model

    report = _assert_int8_tflite_loads_within_budget(
        load_model(BOOK_MODEL), load_dataset(FASHION), tmp_path / "model_int8-full.tflite"
    )
    assert report.passed
