"""``validate`` without ``--reference`` still checks something (issue 26 items 7, 9): the shape contract, finite
outputs, and the reference accuracy the file's own metadata records.

The model is a softmax regression fitted on digits and written with onnx's helpers with deploykit's metadata (what
``deploykit export`` records); the attack's file is the same model with its weights zeroed.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.cli.main import main
from deploykit.errors import DataError
from deploykit.export.metadata import ModelMetadata, write_metadata
from deploykit.export.validate import validate

pytestmark = pytest.mark.slow  # fits a model and runs the runtime worker: about a minute on 2 shared cores


def _softmax_model(path, weights, bias, reference_accuracy):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "softmax_regression",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    write_metadata(
        proto,
        ModelMetadata(class_names=[str(i) for i in range(10)], input_shape=[64], reference_accuracy=reference_accuracy),
    )
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def fitted(digits):
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(max_iter=300).fit(digits.x_train.reshape(len(digits.x_train), -1), digits.y_train)
    accuracy = float(np.mean(fit.predict(digits.x_test.reshape(len(digits.x_test), -1)) == digits.y_test))
    return fit.coef_.T, fit.intercept_, accuracy


def test_a_zeroed_weights_model_fails_against_its_recorded_accuracy(tmp_path, digits, fitted, capsys):
    weights, bias, accuracy = fitted
    good = _softmax_model(tmp_path / "good.onnx", weights, bias, accuracy)
    zeroed = _softmax_model(tmp_path / "zeroed.onnx", np.zeros_like(weights), np.zeros_like(bias), accuracy)
    assert validate(good, digits, repeats=1, batch_sizes=(1,)).passed
    report = validate(zeroed, digits, repeats=1, batch_sizes=(1,), check=False)
    assert not report.passed
    assert [m.check for m in report.mismatches] == ["accuracy_drop"]
    assert "recorded in the file's metadata" in report.mismatches[0].detail
    assert main(["validate", str(zeroed), "--data", "digits", "--repeats", "1"]) == 1
    assert "FAILED: accuracy_drop" in capsys.readouterr().out


def test_non_finite_outputs_fail(tmp_path, digits, fitted):
    weights, bias, _ = fitted
    path = _softmax_model(tmp_path / "nan.onnx", np.full_like(weights, np.nan), bias, None)
    report = validate(path, digits, repeats=1, batch_sizes=(1,), check=False)
    assert "finite_outputs" in [m.check for m in report.mismatches]


@pytest.mark.parametrize("classes", [11, 20])
def test_data_with_more_classes_than_outputs_is_refused(tmp_path, digits, fitted, classes):
    weights, bias, accuracy = fitted
    path = _softmax_model(tmp_path / "m.onnx", weights, bias, accuracy)
    x = np.concatenate([digits.x_train, digits.x_test]).reshape(-1, 64)
    y = np.arange(len(x)) % classes
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=f"outputs 10 classes, the data has {classes}"):
        validate(path, tmp_path / "d.npz", repeats=1, batch_sizes=(1,))


def test_integer_labels_of_two_columns_against_a_classifier_are_one_clear_error(tmp_path, digits, fitted):
    """Labels [N, 2] of integers (not one-hot) are one clear error when the data is read, naming what to give."""
    weights, bias, accuracy = fitted
    path = _softmax_model(tmp_path / "m.onnx", weights, bias, accuracy)
    x = np.concatenate([digits.x_train, digits.x_test]).reshape(-1, 64)
    y = np.random.default_rng(0).integers(0, 5, (len(x), 2))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"integer labels of shape \[\d+, 2\] are not one-hot"):
        validate(path, tmp_path / "d.npz", repeats=1, batch_sizes=(1,))
