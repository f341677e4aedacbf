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
