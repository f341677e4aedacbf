"""Labels as users store them: one-hot rows are class ids (with one log line), two integer columns are refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from deploykit.core.task import Task
from deploykit.data.dataset import load_dataset
from deploykit.errors import DataError
from deploykit.io.inputs import as_dataset


def _one_hot(classes=3, n_per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(classes), n_per_class)
    x = (rng.normal(size=(len(ids), 4)) + ids[:, None]).astype(np.float32)
    return x, np.eye(classes, dtype=np.float32)[ids], ids


def _all_labels(d):
    return np.concatenate([d.y_train, d.y_val, d.y_test])


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, bool])
def test_one_hot_arrays_given_to_the_api_are_class_ids(dtype, caplog):
    x, onehot, ids = _one_hot()
    with caplog.at_level(logging.INFO, logger="deploykit"):
        d = as_dataset((x, onehot.astype(dtype)))
    assert d.task is Task.CLASSIFICATION and d.class_names == ("0", "1", "2")
    assert d.y_train.dtype == np.int64 and d.y_train.ndim == 1
    assert sorted(np.bincount(_all_labels(d)).tolist()) == [20, 20, 20]
    assert "one-hot rows [60, 3]: read as class ids 0..2" in caplog.text
    plain = as_dataset((x, ids))  # the same split as class ids give
    np.testing.assert_array_equal(d.y_test, plain.y_test)
    np.testing.assert_array_equal(d.x_test, plain.x_test)


def test_one_hot_in_an_npz_with_a_given_test_split_and_in_a_csv(tmp_path):
    x, onehot, ids = _one_hot()
    np.savez(
        tmp_path / "split.npz",
        x_train=x[::2],
        y_train=onehot[::2],
        x_test=x[1::2],
        y_test=onehot[1::2],
        class_names=np.array(["a", "b", "c"]),
    )
    d = load_dataset(tmp_path / "split.npz")
    assert d.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(d.y_test, ids[1::2])
    header = "f0,f1,f2,f3,c0,c1,c2"
    rows = [",".join(map(str, [*xi, *yi.astype(int)])) for xi, yi in zip(x, onehot)]
    (tmp_path / "d.csv").write_text("\n".join([header, *rows]) + "\n")
    csv = load_dataset(tmp_path / "d.csv", label_column="c0,c1,c2")
    assert csv.task is Task.CLASSIFICATION and csv.num_classes == 3


def test_a_column_no_row_uses_is_still_a_class():
    """A one-hot matrix of 4 columns whose last class never occurs still names 4 classes (the model's 4 outputs)."""
    x, onehot, _ = _one_hot()
    d = as_dataset((x, np.concatenate([onehot, np.zeros((len(onehot), 1), np.float32)], axis=1)))
    assert d.num_classes == 4


def test_integer_labels_of_two_columns_that_are_not_one_hot_are_one_clear_error():
    x, _, ids = _one_hot(classes=2)
    with pytest.raises(DataError, match=r"integer labels of shape \[40, 2\] are not one-hot"):
        as_dataset((x, np.stack([ids, ids], axis=1)))
    d = as_dataset((x, np.stack([ids, ids], axis=1).astype(np.float32) * 1.5), task="regression")  # said: targets
    assert d.task is Task.REGRESSION and d.num_outputs == 2


def test_a_zero_one_matrix_whose_rows_are_not_one_hot_stays_what_it_was():
    """Several 1s per row (multi-label) are not read as classes: regression targets (a multi-label head's matrix)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, 3)).astype(np.float32)
    y[0] = 1
    d = as_dataset((rng.normal(size=(60, 4)).astype(np.float32), y))
    assert d.task is Task.REGRESSION and d.num_outputs == 3


def test_one_hot_with_the_wrong_number_of_class_names_is_refused():
    x, onehot, _ = _one_hot()
    with pytest.raises(DataError, match="3 columns, but 2 class names"):
        as_dataset((x, onehot), class_names=["a", "b"])
