"""deploykit.io.inputs: what the public functions accept, and the data read as the model reads it."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize(
    ("head", "labels", "task", "read_as"),
    [
        ("linear", 10, None, "regression"),  # keras.io's weather forecaster on whole-number targets
        ("linear", 2, None, "classification"),  # a binary classifier's logit (the TF text tutorial)
        ("linear", 10, "classification", "classification"),  # the user said so: refused later by name, as before
        ("softmax", 10, None, "classification"),
    ],
)
def test_labels_read_as_classes_a_one_unit_linear_model_cannot_tell_apart_are_its_regression_target(
    tmp_path, head, labels, task, read_as
):
    from deploykit.backend import keras
    from deploykit.data.dataset import load_dataset
    from deploykit.io.inputs import read_for_model

    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(300, 4)).astype(np.float32), y=rng.integers(0, labels, 300).astype(np.float32))
    units = 10 if head == "softmax" else 1
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation=head)])
    said = []
    data = read_for_model(lambda t: load_dataset(path, task=t), model, task, said.append)
    assert data.task.value == read_as
    assert bool(said) == (read_as == "regression") and all("regression target" in line for line in said)


@pytest.mark.parametrize(
    ("labels", "task", "read_as", "said"),
    [
        ("matrix", None, "regression", ["multi-label head"]),  # several 1s per row: the head's label matrix
        ("one_hot", None, "regression", ["one-hot label rows", "multi-label head"]),  # read back as that matrix
        ("one_hot", "regression", "regression", ["multi-label head"]),
        ("ids", None, "classification", []),  # class ids: refused by name when the model meets them
        ("fractions", None, "regression", []),  # bounded regression targets: no multi-label line
    ],
)
def test_the_labels_of_a_multi_label_head_are_read_as_its_0_1_matrix(tmp_path, labels, task, read_as, said):
    """Three sigmoid units (the keras.io multi-label tutorial's head): a 0/1 label matrix, or one-hot rows that the
    reader would take for class ids, are the head's three per-label targets, said once."""
    from deploykit.backend import keras
    from deploykit.data.dataset import load_dataset
    from deploykit.io.inputs import read_for_model

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, 300)
    y = {
        "matrix": rng.integers(0, 2, (300, 3)),
        "one_hot": np.eye(3)[ids],
        "ids": ids,
        "fractions": rng.random((300, 3)),
    }[labels].astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(300, 4)).astype(np.float32), y=y)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid")])
    lines = []
    data = read_for_model(lambda t: load_dataset(path, task=t), model, task, lines.append)
    assert data.task.value == read_as
    assert len(lines) == len(said) and all(part in line for part, line in zip(said, lines))
    if read_as == "regression":
        assert data.num_outputs == 3 and (set(np.unique(data.y_train)) == {0.0, 1.0}) == (labels != "fractions")
