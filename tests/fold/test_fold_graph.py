"""Folding over graphs: BatchNorm into convolutions, forward through pooling into a valid conv, forks stop."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.fold import Placement, fold_batchnorm
from tests.core import models
from tests.helpers import randomize_batchnorm

TOL = 1e-5


def _layers():
    from deploykit.backend import keras

    return keras.layers


def _seq(shape, *layers, seed=0):
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    model = keras.Sequential([keras.Input(shape), *layers])
    randomize_batchnorm(model, seed)
    return model


def _exact(model, folded):
    x = np.random.default_rng(5).normal(size=(16, *model.input_shape[1:])).astype("float32")
    diff = np.abs(model(x, training=False).numpy() - folded(x, training=False).numpy()).max()
    assert diff <= TOL, diff


def _kinds(model):
    return [type(l).__name__ for l in model.layers]


@pytest.mark.parametrize(
    "make",
    [
        lambda L: L.Conv2D(4, 3, padding="same", use_bias=False),
        lambda L: L.Conv2D(4, 3, strides=2, dilation_rate=1),
        lambda L: L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
        lambda L: L.SeparableConv2D(5, 3, depth_multiplier=2),
    ],
)
def test_batchnorm_folds_backward_into_2d_kernels_exactly(make):
    L = _layers()
    model = _seq((7, 7, 3), make(L), L.BatchNormalization(), L.ReLU(), L.Flatten(), L.Dense(2))
    folded, report = fold_batchnorm(model)
    assert [f.placement for f in report.folded] == [Placement.BACKWARD]
    assert "BatchNormalization" not in _kinds(folded)
    _exact(model, folded)


def test_batchnorm_folds_backward_into_conv1d():
    L = _layers()
    model = _seq(
        (9, 2),
        L.Conv1D(3, 3, padding="causal"),
        L.BatchNormalization(),
        L.Activation("gelu"),
        L.GlobalAveragePooling1D(),
        L.Dense(2),
    )
    folded, report = fold_batchnorm(model)
    assert report.folded[0].target == model.layers[0].name
    _exact(model, folded)


def test_batchnorm_through_average_pooling_into_a_valid_conv():
    L = _layers()
    model = _seq((8, 8, 3), L.BatchNormalization(), L.AveragePooling2D(), L.Conv2D(4, 3), L.Flatten(), L.Dense(2))
    folded, report = fold_batchnorm(model)
    assert report.folded[0].placement is Placement.FORWARD and report.folded[0].through == [model.layers[1].name]
    assert _kinds(folded) == ["AveragePooling2D", "Conv2D", "Flatten", "Dense"]
    _exact(model, folded)


def test_max_pooling_carries_only_positive_scales():
    L = _layers()
    model = _seq(
        (8, 8, 3), L.BatchNormalization(), L.MaxPooling2D(), L.Conv2D(4, 3), L.GlobalMaxPooling2D(), L.Dense(2)
    )
    folded, report = fold_batchnorm(model)  # randomize_batchnorm draws positive gammas
    assert report.folded and report.folded[0].placement is Placement.FORWARD
    _exact(model, folded)
    bn = model.layers[0]
    gamma, *rest = bn.get_weights()
    bn.set_weights([-gamma, *rest])
    folded, report = fold_batchnorm(model)
    assert not report.folded and "positive" in report.unfolded[0].reason
    _exact(model, folded)


def test_forward_into_a_padded_conv_is_refused_unless_the_map_has_no_shift():
    L = _layers()
    model = _seq((6, 6, 2), L.BatchNormalization(), L.Conv2D(3, 3, padding="same"), L.Flatten(), L.Dense(2))
    folded, report = fold_batchnorm(model)
    assert not report.folded and "pads with zeros" in report.unfolded[0].reason
    scale_only = _seq((6, 6, 2), L.Rescaling(1 / 255.0), L.Conv2D(3, 3, padding="same"), L.Flatten(), L.Dense(2))
    folded, report = fold_batchnorm(scale_only)
    assert [f.kind for f in report.folded] == ["Rescaling"] and "Rescaling" not in _kinds(folded)
    _exact(scale_only, folded)


def test_a_fork_stops_the_fold_and_says_why():
    from deploykit.backend import keras

    L = _layers()
    inputs = keras.Input((6, 6, 2))
    bn = L.BatchNormalization(name="bn")(inputs)
    out = L.Dense(2)(L.Flatten()(L.Add()([L.Conv2D(2, 1, name="c")(bn), bn])))
    model = keras.Model(inputs, out)
    randomize_batchnorm(model, 2)
    folded, report = fold_batchnorm(model)
    assert not report.folded and "fork" in report.unfolded[0].reason
    _exact(model, folded)


def test_residual_model_folds_exactly_and_stays_functional():
    model = models.shared("residual")  # the fold leaves its input alone (tests/fold/test_fold.py checks it)
    folded, report = fold_batchnorm(model)
    assert {f.name for f in report.folded} == {"bn0", "bn1"} and not report.unfolded
    assert type(folded).__name__ == "Functional" and "BatchNormalization" not in _kinds(folded)
    _exact(model, folded)


def test_a_layer_outside_the_table_does_not_stop_the_rest():
    L = _layers()
    model = _seq((6, 4), L.Conv1D(3, 2), L.BatchNormalization(), L.LSTM(3), L.Dense(2))
    folded, report = fold_batchnorm(model)
    assert [f.target for f in report.folded] == [model.layers[0].name] and "LSTM" in _kinds(folded)
    _exact(model, folded)


@pytest.mark.slow
def test_mobilenet_v2_folds_and_exports_exactly_without_batchnorm(tmp_path):
    import onnx

    from deploykit.backend import keras
    from deploykit.export.convert import keras_to_onnx
    from tests.uncertainty.support import session

    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=4)
    randomize_batchnorm(model, 3)
    folded, report = fold_batchnorm(model)
    assert report.folded and not [u for u in report.unfolded if u.kind == "BatchNormalization"]
    assert report.max_abs_diff <= TOL
    proto = keras_to_onnx(folded)
    assert not [n for n in proto.graph.node if "BatchNorm" in n.op_type]
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    got = session(proto).run(None, {proto.graph.input[0].name: x})[0]
    assert np.abs(got - model(x, training=False).numpy()).max() <= TOL
    onnx.checker.check_model(proto)
