"""deploykit.layers: the support table answers for layer objects and serialized configs."""

from __future__ import annotations

import pytest

from deploykit.errors import UnsafeModelError, UnsupportedLayerError
from deploykit.layers import PRUNABLE, SUPPORT, Role, check_layers, layer_type, support_for


def test_every_table_entry_is_a_tf_keras_layer():
    from deploykit.backend import keras

    for name in SUPPORT:
        assert isinstance(getattr(keras.layers, name), type), name


def test_lookups_for_layer_objects():
    from deploykit.backend import keras

    dense = keras.layers.Dense(3, name="d1")
    assert layer_type(dense) == "Dense"
    entry = support_for(dense)
    assert entry.role is Role.DENSE and entry.prunable and not entry.folds_away
    assert support_for(keras.layers.BatchNormalization()).folds_away
    assert support_for(keras.layers.Normalization()).role is Role.NORMALIZATION
    drop = support_for(keras.layers.AlphaDropout(0.1))
    assert drop.role is Role.DROPOUT and drop.identity_at_inference
    assert support_for(keras.layers.PReLU()).role is Role.ACTIVATION


def test_lookups_for_configs():
    assert layer_type({"class_name": "LeakyReLU", "config": {}}) == "LeakyReLU"
    assert support_for({"class_name": "Flatten", "config": {"name": "f"}}).role is Role.RESHAPE
    assert PRUNABLE == frozenset({"Dense"})


@pytest.mark.parametrize("layer", [{"class_name": "Conv2D", "config": {"name": "conv_1"}}, "object"])
def test_unsupported_layer_names_the_layer_and_its_type(layer):
    if layer == "object":
        from deploykit.backend import keras

        layer = keras.layers.LSTM(4, name="conv_1")
    with pytest.raises(UnsupportedLayerError) as info:
        support_for(layer)
    assert "'conv_1'" in str(info.value)
    assert info.value.layer_name == "conv_1" and info.value.layer_type in ("Conv2D", "LSTM")


def test_lambda_needs_unsafe_and_is_not_importable_from_keras3():
    lam = {"class_name": "Lambda", "config": {"name": "my_lambda"}}
    with pytest.raises(UnsafeModelError, match="my_lambda.*--unsafe"):
        support_for(lam)
    entry = support_for(lam, unsafe=True)
    assert entry.role is Role.OPAQUE and not entry.keras3_import
    assert [n for n, s in SUPPORT.items() if not s.keras3_import] == ["Lambda"]


def test_check_layers_checks_them_all():
    ok = [{"class_name": "Dense", "config": {"name": "a"}}, {"class_name": "Dropout", "config": {"name": "b"}}]
    assert [s.role for s in check_layers(ok)] == [Role.DENSE, Role.DROPOUT]
    with pytest.raises(UnsupportedLayerError, match="'c'"):
        check_layers([*ok, {"class_name": "Conv1D", "config": {"name": "c"}}])
