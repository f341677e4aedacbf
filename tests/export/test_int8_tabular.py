"""Issue 22: int8 that survives raw tabular features. A float standardization in front of the first quantized
Dense layer (an int8-search fallback), and ``fold=False`` (optimize --no-fold) respected by the int8 preparation."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.export.int8_prep import STANDARDIZATION, prepare_for_int8


def _raw_features(rows: int = 300, seed: int = 0):
    """Features on scales from 0.001 to 4,000 (breast_cancer's spread)."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(1e-3, 4e3, 12)
    return (rng.normal(size=(rows, 12)) * scales + 2 * scales).astype(np.float32)


def _tabular_model(x, batchnorm: bool = False):
    from deploykit.backend import keras, set_seed

    set_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    return keras.Sequential(
        [
            keras.Input((12,)),
            norm,
            keras.layers.Dense(16, activation="relu"),
            *([keras.layers.BatchNormalization()] if batchnorm else []),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )


def test_the_float_standardization_is_exact_and_sits_before_the_first_dense():
    x = _raw_features()
    model = _tabular_model(x)
    prepared, prep = prepare_for_int8(model, x, standardize=True)
    names = [type(layer).__name__ for layer in prepared.layers]
    assert prepared.layers[0].name == STANDARDIZATION and names[:2] == ["Normalization", "Dense"]
    assert names.count("Normalization") == 1  # the model's own was folded; one float standardization is left
    assert prep.steps[0] == "float_input_standardization"
    assert prep.max_abs_diff < 1e-4  # clipping aside, the same function
    first = prepared.layers[1].get_weights()[0]
    row_scale = np.abs(first).max(axis=1)
    assert row_scale.max() / row_scale.min() < 100  # the kernel rows are on one scale again (folded: ~10^6 apart)


def test_no_fold_keeps_the_normalization_and_batchnorm_as_layers():
    x = _raw_features()
    model = _tabular_model(x, batchnorm=True)
    folded, _ = prepare_for_int8(model, x)
    unfolded, prep = prepare_for_int8(model, x, fold=False)

    def kinds(m):
        return [type(layer).__name__ for layer in m.layers]

    assert "Normalization" not in kinds(folded) and "BatchNormalization" not in kinds(folded)
    assert {"Normalization", "BatchNormalization"} <= set(kinds(unfolded)) and prep.folded == []


@pytest.mark.slow
def test_breast_cancer_ships_int8_onnx_and_tflite_within_one_point(tmp_path):
    """The issue's case: breast_cancer's raw features, Normalization + Dense 16-8-2 (Keras 3, as a user builds it);
    folded into the first Dense layer, int8 loses ~17-30 points; with the float standardization, none."""
    import keras
    from sklearn.datasets import load_breast_cancer

    from deploykit.data.dataset import load_dataset
    from deploykit.export import export_variant
    from deploykit.export.config import QuantConfig
    from deploykit.export.runtimes import open_runner, predict_batches
    from deploykit.fold import fold_batchnorm
    from deploykit.io.models import load_model

    bunch = load_breast_cancer()
    np.savez(tmp_path / "bc.npz", x=bunch.data.astype(np.float32), y=bunch.target.astype(np.int64))
    data = load_dataset(str(tmp_path / "bc.npz"))
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(data.x_train)
    user = keras.Sequential(
        [
            keras.Input((30,)),
            norm,
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    user.compile("adam", "sparse_categorical_crossentropy")
    user.fit(data.x_train, data.y_train, epochs=40, batch_size=32, verbose=0)
    user.save(tmp_path / "bc.keras")
    folded, _ = fold_batchnorm(load_model(str(tmp_path / "bc.keras")))  # what optimize exports (its fold step ran)
    reference = float(np.mean(np.asarray(user(data.x_test)).argmax(1) == data.y_test))
    assert reference > 0.9
    for fmt, quantization, exclude in (("onnx", "int8-dynamic", ()), ("tflite", "int8-full", (STANDARDIZATION,))):
        path = tmp_path / f"m_{quantization}.{fmt}"
        export_variant(
            folded, fmt, quantization, path, data, config=QuantConfig(standardize_input=True, exclude=exclude)
        )
        probs = predict_batches(open_runner(path).predict, data.x_test)
        assert float(np.mean(probs.argmax(1) == data.y_test)) >= reference - 0.01, (fmt, quantization)
