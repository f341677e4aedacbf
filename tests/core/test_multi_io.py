"""Several inputs and outputs: the packing layout, data named after the model's tensors, and packed models.

Fast: no training. The end-to-end runs (the book's Wide & Deep network, a three-headed regressor through
optimize and export) are in tests/pipeline/test_optimize_multi_io.py; serving in tests/serve.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.multi_io import Layout, artifact_layout
from deploykit.core.task import Task
from deploykit.data.dataset import load_dataset
from deploykit.errors import DataError

LAYOUT = Layout.of({"wide": (5,), "deep": (2, 3)}, {"main": (1,), "aux": (2,)})
RNG = np.random.default_rng(0)


def test_layout_orders_tensors_by_name_and_round_trips():
    assert LAYOUT.input_names() == ["deep", "wide"] and LAYOUT.output_names() == ["aux", "main"]
    assert LAYOUT.input_size == 11 and LAYOUT.output_size == 3 and LAYOUT.columns("main") == slice(2, 3)
    values = {"wide": RNG.normal(size=(4, 5)), "deep": RNG.normal(size=(4, 2, 3))}
    packed = LAYOUT.join_inputs(values)
    assert packed.shape == (4, 11)
    np.testing.assert_array_equal(packed[:, :6], values["deep"].reshape(4, 6))
    back = LAYOUT.split_inputs(packed)
    for name, value in values.items():
        np.testing.assert_array_equal(back[name], value)


def test_artifact_layout_leaves_deploykit_contract_outputs_alone():
    assert artifact_layout({"input": (4,)}, {"logits": (3,), "probabilities": (3,)}) is None
    assert artifact_layout({"input": (4,)}, {"mean": (2,), "std": (2,)}) is None
    assert artifact_layout({"a": (2,), "b": (3,)}, {"prediction": (1,)}).outputs == ()
    layout = artifact_layout({"input": (4,)}, {"price": (1,), "age": (1,)})
    assert layout.output_names() == ["age", "price"]


def _npz(tmp_path, **arrays):
    path = tmp_path / "named.npz"
    np.savez(path, **arrays)
    return path


def test_an_npz_named_after_the_inputs_and_outputs_is_packed_in_name_order(tmp_path):
    n = 120
    arrays = {
        "wide": RNG.normal(size=(n, 5)),
        "deep": RNG.normal(size=(n, 2, 3)),
        "main": RNG.normal(size=(n, 1)),
        "aux": RNG.normal(size=(n, 2)),
    }
    data = load_dataset(_npz(tmp_path, **arrays), layout=LAYOUT)
    assert data.task is Task.REGRESSION and data.layout == LAYOUT
    assert data.input_shape == (11,) and data.num_outputs == 3
    x = np.concatenate([data.x_train, data.x_val, data.x_test])
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    order = np.argsort(x[:, 0])  # rows are split at random: match them back by their first value
    expected = np.argsort(arrays["deep"][:, 0, 0])
    np.testing.assert_allclose(x[order, 6:], arrays["wide"][expected], rtol=1e-6)
    np.testing.assert_allclose(y[order, 0:2], arrays["aux"][expected], rtol=1e-6)
    np.testing.assert_allclose(y[order, 2], arrays["main"][expected, 0], rtol=1e-6)


def test_one_shared_y_serves_every_output_and_splits_may_be_given(tmp_path):
    layout = Layout.of({"a": (2,), "b": (3,)}, {"main": (1,), "aux": (1,)})
    arrays = {
        f"{name}_{part}": RNG.normal(size=(rows, size))
        for name, size in (("a", 2), ("b", 3))
        for part, rows in (("train", 50), ("test", 20))
    }
    arrays |= {"y_train": RNG.normal(size=50), "y_test": RNG.normal(size=20)}
    data = load_dataset(_npz(tmp_path, **arrays), layout=layout)
    assert len(data.x_test) == 20 and data.y_test.shape == (20, 2)
    np.testing.assert_allclose(data.y_test[:, 0], data.y_test[:, 1])
    np.testing.assert_allclose(data.x_test[:, :2], arrays["a_test"], rtol=1e-6)


def test_several_inputs_and_one_output_keep_class_labels(tmp_path):
    layout = Layout.of({"a": (2,), "b": (3,)}, {"dense": (3,)})
    path = _npz(tmp_path, a=RNG.normal(size=(90, 2)), b=RNG.normal(size=(90, 3)), y=np.arange(90) % 3)
    data = load_dataset(path, layout=layout)
    assert data.task is Task.CLASSIFICATION and data.num_classes == 3


def test_a_missing_input_array_is_one_error_naming_it(tmp_path):
    path = _npz(tmp_path, wide=np.zeros((10, 5)), main=np.zeros((10, 1)), aux=np.zeros((10, 2)))
    with pytest.raises(DataError, match=r"no array 'deep' for the model input 'deep'.*holds aux, main, wide"):
        load_dataset(path, layout=LAYOUT)


def test_a_missing_target_and_a_misshapen_input_are_named(tmp_path):
    path = _npz(tmp_path, wide=np.zeros((10, 5)), deep=np.zeros((10, 2, 3)), main=np.zeros((10, 1)))
    with pytest.raises(DataError, match=r"no targets array 'aux' for the model output 'aux', nor a shared 'y'"):
        load_dataset(path, layout=LAYOUT)
    path = _npz(tmp_path, wide=np.zeros((10, 4)), deep=np.zeros((10, 2, 3)), y=np.zeros(10))
    with pytest.raises(
        DataError, match=r"array 'wide' has rows of shape \[4\], but the model input 'wide' takes \[5\]"
    ):
        load_dataset(path, layout=LAYOUT)
    path = _npz(
        tmp_path, wide=np.zeros((10, 5)), deep=np.zeros((9, 2, 3)), main=np.zeros((10, 1)), aux=np.zeros((10, 2))
    )
    with pytest.raises(DataError, match="as many rows"):
        load_dataset(path, layout=LAYOUT)


def test_an_npz_without_x_says_what_a_model_with_several_tensors_needs(tmp_path):
    with pytest.raises(DataError, match="arrays named after them"):
        load_dataset(_npz(tmp_path, wide=np.zeros((10, 5))))


def test_several_outputs_refuse_classification(tmp_path):
    path = _npz(tmp_path, wide=np.zeros((10, 5)), deep=np.zeros((10, 2, 3)), y=np.zeros(10))
    with pytest.raises(DataError, match="regression heads"):
        load_dataset(path, layout=LAYOUT, task="classification")


def _two_by_two():
    """A tf_keras model with two inputs and two outputs (untrained), as a user writes it."""
    from deploykit.backend import keras, set_seed

    set_seed(0)
    wide, deep = keras.Input((3,), name="wide"), keras.Input((2, 2), name="deep")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(deep))
    main = keras.layers.Dense(1, name="main")(keras.layers.Concatenate()([wide, hidden]))
    aux = keras.layers.Dense(2, name="aux")(hidden)
    return keras.Model([wide, deep], [main, aux])


def test_a_packed_model_computes_exactly_the_model_and_unpacks_to_it():
    from deploykit.core.multi_io_model import packing_of, unpack_model
    from deploykit.io.models import check_single_io

    model = _two_by_two()
    packed = check_single_io(model)
    assert packed.input_shape == (None, 7) and packed.output_shape == (None, 3)
    packing = packing_of(packed)
    assert packing.input_order == ("wide", "deep") and packing.output_order == ("main", "aux")
    wide, deep = RNG.normal(size=(16, 3)).astype("float32"), RNG.normal(size=(16, 2, 2)).astype("float32")
    main, aux = (np.asarray(t) for t in model([wide, deep]))
    out = np.asarray(packed(packing.layout.join_inputs({"wide": wide, "deep": deep})))
    np.testing.assert_array_equal(out, np.concatenate([aux, main], axis=1))  # outputs in name order
    back = unpack_model(packed)
    assert [t.name.split(":")[0] for t in back.inputs] == ["wide", "deep"]
    for got, want in zip(back([wide, deep]), (main, aux)):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_a_softmax_head_among_several_outputs_is_packed_as_its_probabilities_and_its_ids_read_as_one_hot(
    tmp_path, caplog
):
    """A value head and a 3-class softmax head (an age-and-gender model): the softmax head's probabilities are
    values beside the other head's (it was refused), said in one line; its class ids [N] are read as one-hot."""
    import logging

    from deploykit.backend import keras
    from deploykit.core.multi_io_model import packing_of
    from deploykit.io.models import check_single_io

    x = keras.Input((4,), name="x")
    model = keras.Model(
        x, [keras.layers.Dense(1, name="value")(x), keras.layers.Dense(3, activation="softmax", name="kind")(x)]
    )
    with caplog.at_level(logging.INFO, logger="deploykit"):
        packed = check_single_io(model)
    assert "output 'kind' ends in a softmax among 2 outputs: shipped as its class probabilities" in caplog.text
    features = RNG.normal(size=(40, 4)).astype("float32")
    value, kind = (np.asarray(t) for t in model(features))
    np.testing.assert_array_equal(np.asarray(packed(features)), np.concatenate([kind, value], axis=1))  # name order
    ids = np.arange(40) % 3
    path = _npz(tmp_path, x=features, value=RNG.normal(size=(40, 1)), kind=ids)
    data = load_dataset(path, layout=packing_of(packed).layout)
    assert data.check_model(packed)[0].value == "regression"
    rows = np.concatenate([data.y_train, data.y_val, data.y_test])
    assert rows.shape == (40, 4) and set(np.unique(rows[:, :3])) == {0.0, 1.0} and (rows[:, :3].sum(1) == 1).all()


def test_class_ids_are_read_as_one_hot_only_where_they_fit_the_output():
    """A per-pixel softmax [4, 4, 3] takes a mask of ids [N, 4, 4]; targets of the output's own size, ids out of
    range, or fractions are left as they are (the size check names what does not fit)."""
    from deploykit.core.multi_io import Tensor, _one_hot_ids

    out = Tensor("mask", (4, 4, 3))
    ids = RNG.integers(0, 3, (5, 4, 4))
    hot = _one_hot_ids("d", "y", ids, out)
    assert hot.shape == (5, 4, 4, 3) and (hot.argmax(-1) == ids).all() and (hot.sum(-1) == 1).all()
    assert _one_hot_ids("d", "y", ids[..., None], out).shape == (5, 4, 4, 3)
    same = RNG.random((5, 4, 4, 3))
    assert _one_hot_ids("d", "y", same, out) is same
    for bad in (ids + 3, ids + 0.5):
        assert _one_hot_ids("d", "y", bad, out) is bad
    assert _one_hot_ids("d", "y", RNG.random((5, 4, 4)), Tensor("image", (4, 4, 1))).shape == (5, 4, 4)  # C = 1


def test_one_input_may_keep_its_own_name_or_x_beside_named_outputs(tmp_path):
    """An artifact calls its one input ``input``; the user's .npz names it after the model (or ``x``)."""
    layout = Layout.of({"input": (4,)}, {"price": (1,), "rooms": (2,)})
    for key in ("features", "x"):
        path = _npz(
            tmp_path, **{key: RNG.normal(size=(40, 4))}, price=RNG.normal(size=(40, 1)), rooms=RNG.normal(size=(40, 2))
        )
        data = load_dataset(path, layout=layout)
        assert data.input_shape == (4,) and data.y_train.shape[1] == 3


def _embedded_category(reader: str = "Embedding"):
    """Structured data as tutorials model it without strings: numeric columns beside an integer category code
    that an Embedding (or a one-hot CategoryEncoding) reads (tf_keras, untrained), softmax head."""
    from deploykit.backend import keras, set_seed

    set_seed(0)
    numeric, category = keras.Input((5,), name="numeric"), keras.Input((1,), name="category")
    if reader == "Embedding":
        embedded = keras.layers.Flatten()(keras.layers.Embedding(7, 3)(category))
    else:
        embedded = keras.layers.CategoryEncoding(num_tokens=7, output_mode="one_hot")(category)
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([numeric, embedded]))
    hidden = keras.layers.BatchNormalization()(hidden)
    return keras.Model([numeric, category], keras.layers.Dense(3, activation="softmax")(hidden))


@pytest.mark.parametrize("reader", ["Embedding", "CategoryEncoding"])
def test_generated_inputs_hold_token_ids_where_a_packed_input_is_embedded(reader):
    # the fold check, the temperature fold's check and export without data drew standard-normal values for the
    # whole packed input, and the Embedding's gather stopped on a negative id (InvalidArgumentError)
    from deploykit.core.graph import graph_from_model, id_columns, random_inputs
    from deploykit.core.multi_io_model import packing_of
    from deploykit.fold import fold_batchnorm
    from deploykit.io.models import check_single_io
    from deploykit.pipeline.calibrate import fold_temperature

    packed = check_single_io(_embedded_category(reader))
    graph = graph_from_model(packed)
    columns = packing_of(packed).layout.split_inputs(np.arange(6, dtype=np.float32)[None])
    assert columns["category"].ravel().tolist() == [0.0]  # name order: the category code is column 0
    assert id_columns(graph) == [(slice(0, 1), 7)]
    x = random_inputs(graph, 500)
    ids, rest = x[:, 0], x[:, 1:]
    assert set(np.unique(ids)) == set(range(7)) and (rest != np.round(rest)).all()
    folded, report = fold_batchnorm(packed)
    assert report.changed and report.max_abs_diff < 1e-5
    fold_temperature(folded, 2.0)
