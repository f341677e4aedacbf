"""Issue 22: int8 that survives raw tabular features. A float standardization in front of the first quantized
Dense layer (an int8-search fallback), and ``fold=False`` (optimize --no-fold) respected by the int8 preparation."""

from __future__ import annotations

import functools
import gzip

import numpy as np
import pytest

from deploykit.export.int8_prep import STANDARDIZATION, on_grid, prepare_for_int8
from tests.helpers import breast_cancer_npz, keras3_tabular_model


def _raw_features(rows: int = 300, seed: int = 0):
    """Features on scales from 0.001 to 4,000 (breast_cancer's spread)."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(1e-3, 4e3, 12)
    return (rng.normal(size=(rows, 12)) * scales + 2 * scales).astype(np.float32)


@functools.cache
def _tabular_model(batchnorm: bool = False):
    """Normalization adapted on :func:`_raw_features` + Dense 16-8-2, built once per process: the preparation and
    the export copy it (checked: its weights, config and layers are the same after both), and ``adapt`` traces a
    TensorFlow function each time (a quarter of a CPU second)."""
    from deploykit.backend import keras, set_seed

    set_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(_raw_features())
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


def _no_clipping(monkeypatch) -> None:
    """The weight clip search off (only the largest weight as threshold): what is left of the preparation is exact."""
    from deploykit.export import int8_clip

    monkeypatch.setattr(int8_clip, "CLIP_FRACTIONS", int8_clip.CLIP_FRACTIONS[:1])
    monkeypatch.setattr(int8_clip, "REFINE_FACTORS", np.ones(1))


def test_the_float_standardization_is_exact_and_sits_before_the_first_dense(monkeypatch):
    _no_clipping(monkeypatch)  # with the grid's scales the clip search may trim a column or two (2 of 16 here)
    x = _raw_features()
    model = _tabular_model()
    prepared, prep = prepare_for_int8(model, x, standardize=True)
    names = [type(layer).__name__ for layer in prepared.layers]
    assert prepared.layers[0].name == STANDARDIZATION and names[:2] == ["Normalization", "Dense"]
    assert names.count("Normalization") == 1  # the model's own was folded; one float standardization is left
    assert prep.steps[0] == "float_input_standardization"
    assert prep.max_abs_diff < 1e-4  # clipping aside, the same function
    first = prepared.layers[1].get_weights()[0]
    row_scale = np.abs(first).max(axis=1)
    assert row_scale.max() / row_scale.min() < 100  # the kernel rows are on one scale again (folded: ~10^6 apart)


def _powers_of_two(values, rtol: float = 0.0) -> bool:
    """Whether every value is a power of two (within ``rtol``: the converter folds 1 / sqrt(variance) in float32)."""
    values = np.abs(np.asarray(values, np.float64))
    nearest = 2.0 ** np.round(np.log2(values))
    return bool(np.all(np.abs(values - nearest) <= rtol * nearest))


def test_the_float_standardization_constants_sit_on_a_coarse_grid_and_stay_exact(monkeypatch):
    """Measured means and stds are incompressible floats (6 KiB for 784 pixels in a gzipped file); on the grid
    (scales powers of two, means multiples of half the scale) they repeat, and the first Dense absorbs them exactly."""
    _no_clipping(monkeypatch)
    x = _raw_features()
    prepared, prep = prepare_for_int8(_tabular_model(), x, standardize=True)
    norm = prepared.get_layer(STANDARDIZATION)
    mean, variance = (np.asarray(norm.get_config()[k], np.float64).ravel() for k in ("mean", "variance"))
    scale = np.sqrt(variance)
    assert _powers_of_two(scale)
    assert np.allclose(2 * mean / scale, np.round(2 * mean / scale))
    true_std = x.astype(np.float64).std(axis=0)
    true_std = np.maximum(true_std, 0.01 * np.median(true_std))  # the floor: 1% of the typical std
    assert np.all(scale / true_std <= np.sqrt(2) + 1e-9) and np.all(true_std / scale <= np.sqrt(2) + 1e-9)
    assert np.all(np.abs(mean - x.mean(axis=0)) <= scale / 4 + 1e-9)
    assert prep.max_abs_diff < 1e-4  # the kernel absorbed the values used, not the measured ones
    measured, _prep = prepare_for_int8(_tabular_model(), x, standardize=True, exact=True)  # the next try
    norm = measured.get_layer(STANDARDIZATION)
    assert np.allclose(np.asarray(norm.get_config()["mean"], np.float64).ravel(), x.mean(axis=0), rtol=1e-5)
    assert not _powers_of_two(np.sqrt(np.asarray(norm.get_config()["variance"], np.float64).ravel()))

    pixels = np.random.default_rng(1).integers(0, 256, size=(300, 784)).astype(np.float64)
    pixels *= np.random.default_rng(2).random(784) ** 4  # features of 784 different spreads
    mean, scale = on_grid(pixels.mean(axis=0), np.maximum(pixels.std(axis=0), 1e-3))
    raw = np.concatenate([mean, 1 / scale]).astype(np.float32).tobytes()
    measured = np.concatenate([pixels.mean(axis=0), 1 / pixels.std(axis=0)]).astype(np.float32).tobytes()
    assert len(gzip.compress(raw, 9)) < 0.5 * len(gzip.compress(measured, 9))


def test_the_standardized_int8_tflite_keeps_the_grid_constants_and_follows_the_model(tmp_path):
    """In LiteRT: the file's float multipliers are the grid's powers of two, and its probabilities follow the
    prepared model's (int8 rounding aside)."""
    from ai_edge_litert.interpreter import Interpreter

    from deploykit.export import export_variant
    from deploykit.export.config import QuantConfig
    from deploykit.export.runtimes import open_runner, predict_batches

    x = _raw_features()
    model = _tabular_model()
    path = tmp_path / "m.tflite"
    config = QuantConfig(standardize_input=True, exclude=(STANDARDIZATION,))
    export_variant(model, "tflite", "int8-full", path, x, config=config)
    interpreter = Interpreter(model_path=str(path))
    floats = []
    for tensor in interpreter.get_tensor_details():
        if tensor["dtype"] == np.float32 and int(np.prod(tensor["shape"])) == 12:
            try:
                floats.append(np.asarray(interpreter.get_tensor(tensor["index"])).ravel())
            except ValueError:  # not a constant
                continue
    assert any(_powers_of_two(values, rtol=1e-6) for values in floats if np.all(values != 0))
    reference = np.asarray(model(x))
    probs = predict_batches(open_runner(path).predict, x)
    assert np.mean(probs.argmax(1) == reference.argmax(1)) >= 0.95
    assert np.abs(probs - reference).mean() < 0.05


def test_no_fold_keeps_the_normalization_and_batchnorm_as_layers():
    x = _raw_features()
    model = _tabular_model(batchnorm=True)
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
    from deploykit.data.dataset import load_dataset
    from deploykit.export import export_variant
    from deploykit.export.config import QuantConfig
    from deploykit.export.runtimes import open_runner, predict_batches
    from deploykit.fold import fold_batchnorm
    from deploykit.io.models import load_model

    path, _, _ = breast_cancer_npz(tmp_path)
    data = load_dataset(str(path))
    user = keras3_tabular_model(
        data.x_train, data.y_train, tmp_path / "bc.keras", hidden=(16, 8), softmax=True, epochs=40
    )
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
