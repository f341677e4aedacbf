"""UncertaintyPredictor: results, seeds, bad inputs, concurrent calls, session options."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deploykit.errors import DataError, ModelLoadError, UsageError
from deploykit.uncertainty import UncertaintyPredictor, UncertaintyResult, export_mc_onnx


@pytest.fixture(scope="module")
def predictor(mc_model_path):
    return UncertaintyPredictor(mc_model_path, threads=1)


def _check_valid(result: UncertaintyResult, n: int, samples: int) -> None:
    assert result.mean.shape == result.std.shape == (n, 10)
    assert result.predictive_entropy.shape == result.mutual_information.shape == result.predicted_class.shape == (n,)
    assert np.allclose(result.mean.sum(axis=1), 1, atol=1e-5) and np.all(result.std >= 0)
    assert np.all(result.mutual_information >= 0) and np.all(
        result.mutual_information <= result.predictive_entropy + 1e-6
    )
    assert np.all(result.predictive_entropy <= np.log(10) + 1e-5)
    assert np.array_equal(result.predicted_class, result.mean.argmax(axis=1))
    assert result.samples == samples and result.sample_probabilities.shape == (samples, n, 10)


def test_predict(predictor, digits):
    assert predictor.input_shape == (64,) and predictor.default_samples == 20 and predictor.max_samples == 1000
    assert predictor.class_names == tuple(str(i) for i in range(10))
    assert predictor.session.get_session_options().intra_op_num_threads == 1
    _check_valid(predictor.predict(digits.x_test[:9]), 9, 20)
    result = predictor.predict(digits.x_test[:9].astype(np.float64), samples=5)
    _check_valid(result, 9, 5)
    assert result.entropy is result.predictive_entropy


def test_batches(predictor, digits):
    result = predictor.predict(digits.x_test[:25], samples=4, batch_size=10)
    _check_valid(result, 25, 4)


def test_seeded_predictors_repeat(tmp_path, digits, mc_bn_model):
    path = tmp_path / "seeded.onnx"
    export_mc_onnx(mc_bn_model, path, samples=10, seed=11)
    x = digits.x_test[:5]
    a, b = UncertaintyPredictor(path), UncertaintyPredictor(path)
    first = [a.predict(x).mean for _ in range(2)]
    second = [b.predict(x).mean for _ in range(2)]
    assert all(np.array_equal(u, v) for u, v in zip(first, second))
    assert not np.array_equal(first[0], first[1])


def test_concurrent_calls(predictor, digits):
    x = digits.x_test[:32]

    def call(k: int) -> UncertaintyResult:
        return predictor.predict(x, samples=10 + k % 3)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(40)))
    for k, result in enumerate(results):
        _check_valid(result, 32, 10 + k % 3)
    assert len({r.mean.tobytes() for r in results}) == len(results)  # every call drew its own masks


@pytest.mark.parametrize(
    "x, error, match",
    [
        (np.zeros((3, 63), np.float32), DataError, r"shape \['N', 64\], got \[3, 63\]"),
        (np.zeros(64, np.float32), DataError, r"single instance\? pass x\[None\]"),
        (np.zeros((0, 64), np.float32), DataError, "no instances"),
        (np.array([["a"] * 64]), DataError, "real numbers"),
        (np.zeros((2, 64), np.complex64), DataError, "dtype complex64"),
        (np.full((2, 64), np.nan, np.float32), DataError, "128 NaN or inf"),
    ],
)
def test_bad_inputs(predictor, x, error, match):
    with pytest.raises(error, match=match):
        predictor.predict(x)


@pytest.mark.parametrize(
    "samples, match",
    [
        (0, "between 1 and 1000"),
        (1001, "between 1 and 1000"),
        (-3, "between 1 and 1000"),
        (2.0, "must be an integer"),
        (True, "must be an integer"),
    ],
)
def test_bad_samples(predictor, digits, samples, match):
    with pytest.raises(UsageError, match=match):
        predictor.predict(digits.x_test[:2], samples=samples)


def test_bad_models(tmp_path, mc_bn_model, mc_model_path):
    import onnx

    from deploykit.export.convert import keras_to_onnx

    with pytest.raises(ModelLoadError, match="no such file"):
        UncertaintyPredictor(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load it"):
        UncertaintyPredictor(tmp_path / "junk.onnx")
    onnx.save(keras_to_onnx(mc_bn_model), str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelLoadError, match="not an MC Dropout model"):
        UncertaintyPredictor(tmp_path / "plain.onnx")
    with pytest.raises(UsageError, match="threads must be an integer >= 1"):
        UncertaintyPredictor(mc_model_path, threads=0)


def test_session_options(mc_model_path, digits):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    predictor = UncertaintyPredictor(mc_model_path, threads=2, session_options=options)
    assert predictor.session.get_session_options().intra_op_num_threads == 2
    _check_valid(predictor.predict(digits.x_test[:4]), 4, 20)
