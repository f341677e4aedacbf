"""The task and output kind of a model: read off its last layer, resolved with the labels or --task."""

import pytest

from deploykit.core.graph import graph_from_model
from deploykit.core.task import OutputKind, Task, output_kind, resolve_task
from deploykit.errors import UsageError


def _model(head):
    from deploykit.backend import keras

    layers = [keras.Input((4,)), keras.layers.Dense(8, activation="relu")] + head
    return keras.Sequential(layers)


@pytest.mark.parametrize(
    "head, kind",
    [
        (lambda k: [k.layers.Dense(3, activation="softmax")], OutputKind.PROBABILITIES),
        (lambda k: [k.layers.Dense(3), k.layers.Softmax()], OutputKind.PROBABILITIES),
        (lambda k: [k.layers.Dense(3), k.layers.Activation("softmax")], OutputKind.PROBABILITIES),
        (lambda k: [k.layers.Dense(3)], OutputKind.VALUES),
        (lambda k: [k.layers.Dense(1, activation="relu")], OutputKind.VALUES),
        (lambda k: [k.layers.Dense(1, activation="sigmoid")], OutputKind.SIGMOID),
        (lambda k: [k.layers.Dense(1), k.layers.Activation("sigmoid")], OutputKind.SIGMOID),
    ],
)
def test_output_kind_is_read_off_the_last_layer(head, kind):
    from deploykit.backend import keras

    assert output_kind(graph_from_model(_model(head(keras)))) is kind


def test_labels_decide_between_logits_and_regression():
    assert resolve_task(OutputKind.VALUES, 3, labels_are_classes=True) == (Task.CLASSIFICATION, OutputKind.LOGITS)
    assert resolve_task(OutputKind.VALUES, 3, labels_are_classes=False) == (Task.REGRESSION, OutputKind.VALUES)


def test_the_task_given_wins_over_the_labels_and_the_width():
    assert resolve_task(OutputKind.VALUES, 3, task=Task.REGRESSION, labels_are_classes=True) == (
        Task.REGRESSION,
        OutputKind.VALUES,
    )
    assert resolve_task(OutputKind.VALUES, 1) == (Task.REGRESSION, OutputKind.VALUES)
    assert resolve_task(OutputKind.VALUES, 10) == (Task.CLASSIFICATION, OutputKind.LOGITS)


def test_impossible_combinations_are_usage_errors():
    with pytest.raises(UsageError, match="softmax"):
        resolve_task(OutputKind.PROBABILITIES, 3, task=Task.REGRESSION)
    with pytest.raises(UsageError, match=r"3 independent sigmoid units \(a multi-label head\), but the labels are"):
        resolve_task(OutputKind.SIGMOID, 3, task=Task.CLASSIFICATION)
    with pytest.raises(UsageError, match="multi-label head"):
        resolve_task(OutputKind.SIGMOID, 3, labels_are_classes=True)


def test_several_sigmoid_units_are_a_multi_label_head_read_as_per_label_values(caplog):
    """The keras.io multi-label head (Dense(K, sigmoid), binary_crossentropy): K independent probabilities."""
    import logging

    with caplog.at_level(logging.INFO, logger="deploykit"):
        assert resolve_task(OutputKind.SIGMOID, 3) == (Task.REGRESSION, OutputKind.VALUES)
    assert "3 sigmoid units: a multi-label head, read as 3 per-label probabilities" in caplog.text
    assert "0/1 labels" not in caplog.text  # no labels were given
    assert resolve_task(OutputKind.SIGMOID, 3, labels_are_classes=False) == (Task.REGRESSION, OutputKind.VALUES)


def test_one_unit_is_a_binary_classifier_unless_regression_is_said():
    """Issue 20: one sigmoid unit is P(class 1); one linear unit with class labels is its logit (no longer an error)."""
    binary = (Task.CLASSIFICATION, OutputKind.SIGMOID)
    assert resolve_task(OutputKind.SIGMOID, 1) == binary
    assert resolve_task(OutputKind.SIGMOID, 1, labels_are_classes=True) == binary
    assert resolve_task(OutputKind.SIGMOID, 1, labels_are_classes=False) == (Task.REGRESSION, OutputKind.VALUES)
    assert resolve_task(OutputKind.SIGMOID, 3, task=Task.REGRESSION) == (Task.REGRESSION, OutputKind.VALUES)
    logit = (Task.CLASSIFICATION, OutputKind.BINARY_LOGITS)
    assert resolve_task(OutputKind.VALUES, 1, task=Task.CLASSIFICATION) == logit
    assert resolve_task(OutputKind.VALUES, 1, labels_are_classes=True) == logit


@pytest.mark.parametrize(
    "head, y, expected",
    [
        (lambda k: [k.layers.Dense(1, activation="sigmoid")], [0, 1], (Task.CLASSIFICATION, OutputKind.SIGMOID)),
        (lambda k: [k.layers.Dense(1)], [0, 1], (Task.CLASSIFICATION, OutputKind.BINARY_LOGITS)),
        (
            lambda k: [k.layers.Dense(1), k.layers.Activation("sigmoid")],
            [0.2, 0.7],
            (Task.REGRESSION, OutputKind.VALUES),
        ),
        (lambda k: [k.layers.Dense(1, activation="sigmoid")], [0, 1, 2], "has 3 classes, but model"),
        (lambda k: [k.layers.Dense(1, activation="softmax")], [0, 1], "has 2 classes, but model"),
        (lambda k: [k.layers.Dense(3, activation="sigmoid")], [0, 1, 2], "a multi-label head.*class ids"),
        (
            lambda k: [k.layers.Dense(3, activation="sigmoid")],
            [[1, 0, 1], [0, 1, 1], [0, 0, 0]],
            (Task.REGRESSION, OutputKind.VALUES),
        ),
    ],
)
def test_the_data_check_resolves_binary_heads_and_refuses_what_does_not_fit(head, y, expected):
    import numpy as np

    from deploykit.backend import keras
    from deploykit.errors import DataError
    from deploykit.io.inputs import as_dataset

    rng = np.random.default_rng(0)
    labels = np.resize(np.asarray(y, np.float32), (60, *np.shape(y)[1:]))
    data = as_dataset((rng.normal(size=(60, 4)).astype(np.float32), labels))
    model = _model(head(keras))
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            data.check_model(model)
    else:
        assert data.check_model(model) == expected


def test_a_classifiers_raw_outputs_say_what_they_hold():
    """A converter's ONNX file says nothing of its head: its outputs on some rows do (kind_of_outputs)."""
    import numpy as np

    from deploykit.core.task import kind_of_outputs

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (64, 10))
    softmax = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    logit = rng.normal(0, 3, (64, 1))
    assert kind_of_outputs(softmax.astype(np.float32), 10) is OutputKind.PROBABILITIES
    assert kind_of_outputs(z, 10) is OutputKind.LOGITS
    assert kind_of_outputs(np.abs(z) / np.abs(z).sum(), 10) is OutputKind.LOGITS  # non-negative, rows not summing to 1
    assert kind_of_outputs(1 / (1 + np.exp(-logit)), 2) is OutputKind.SIGMOID
    assert kind_of_outputs(logit, 2) is OutputKind.BINARY_LOGITS
    assert kind_of_outputs(logit, 3) is OutputKind.PROBABILITIES  # no reading: the output contract names the mismatch
