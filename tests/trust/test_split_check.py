"""Issue 22: when deploykit makes the validation / test split itself, or a split scores far above the other (or
near 100%), the run says the split may hold the model's training rows, before any training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.core.evaluate import Budget, Metric
from deploykit.data.dataset import load_dataset
from deploykit.pipeline.confirm import Reference
from deploykit.pipeline.split_check import split_check, suspects

BUDGET = Budget(Metric.ACCURACY, 0.01)


def _xy(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % 3


def test_which_splits_deploykit_made_is_recorded(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    np.savez(tmp_path / "given.npz", x_train=x[:400], y_train=y[:400], x_test=x[400:], y_test=y[400:])
    np.savez(
        tmp_path / "all.npz", x_train=x[:400], y_train=y[:400], x_val=x[400:500], y_val=y[400:500],
        x_test=x[500:], y_test=y[500:],
    )  # fmt: skip
    assert load_dataset(str(tmp_path / "xy.npz")).own_split == ("validation", "test")
    assert load_dataset(str(tmp_path / "given.npz")).own_split == ("validation",)
    assert load_dataset(str(tmp_path / "all.npz")).own_split == ()
    assert load_dataset("digits").own_split == ()  # embedded: the shipped model was trained on this very split


def test_a_split_made_by_deploykit_is_said_once_with_how_to_give_splits(tmp_path):
    x, y = _xy(1000)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    data = load_dataset(str(tmp_path / "xy.npz"))
    same = np.eye(3)[data.y_val], np.eye(3)[data.y_test]  # an exact model: no split above the other
    figures, lines = split_check(data, Reference(*same), BUDGET)
    assert figures["made_by_deploykit"] == ["validation", "test"]
    assert len(lines) == 3 and lines[0].startswith("note: deploykit made the validation and test splits of xy.npz")
    assert "x_train, y_train, x_val, y_val, x_test and y_test" in lines[0]
    assert figures["near_perfect"] == ["validation", "test"] and "100.00% on the validation split" in lines[1]


def test_a_split_far_above_the_other_is_flagged_beyond_what_its_size_explains():
    assert suspects(1.0, 300, 0.95, 300, 0.01) == ["validation"]  # 5 points: beyond the budget and the noise
    assert suspects(0.90, 300, 0.97, 300, 0.01) == ["test"]
    assert suspects(0.96, 300, 0.95, 300, 0.01) == []  # 1 point on 300 rows: what two samples differ by
    assert suspects(0.93, 100, 0.88, 100, 0.01) == []  # 5 points on 100 rows each: still within the noise


@pytest.mark.slow
def test_a_validation_split_of_training_rows_is_warned_about(cli, digits, tmp_path):
    """A Keras 3 model trained on rows then given as the validation split: its validation accuracy far above its
    test accuracy, the run warns before any training and the report keeps the figures."""
    import keras as k3

    k3.utils.set_random_seed(0)
    x_train, y_train = digits.x_train[:400] / 16, digits.y_train[:400]
    model = k3.Sequential(
        [
            k3.Input(digits.input_shape),
            k3.layers.Dense(64, activation="relu"),
            k3.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=60, batch_size=32, verbose=0)  # learns its 400 rows by heart
    model.save(tmp_path / "m.keras")
    np.savez(
        tmp_path / "d.npz", x_train=x_train.astype(np.float32), y_train=y_train,
        x_val=x_train.astype(np.float32), y_val=y_train,
        x_test=(digits.x_test / 16).astype(np.float32), y_test=digits.y_test,
    )  # fmt: skip
    out = tmp_path / "out"
    done = cli(
        "optimize", tmp_path / "m.keras", "--data", tmp_path / "d.npz", "--out", out, "--no-sparsity", "--no-mc",
        "--no-export",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    check = report["split_check"]
    assert check["made_by_deploykit"] == [] and check["likely_training_rows_in"] == ["validation"]
    assert check["original_accuracy"]["validation"] - check["original_accuracy"]["test"] > 0.02
    assert "the validation split likely holds rows the model was trained on" in done.stderr
    assert any("likely holds rows the model was trained on" in n for n in report["notes"])
