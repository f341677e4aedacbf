"""compact on convolutions: dead output channels go exactly; coupled channels are skipped with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.sparsity import compact


def _x(shape, n=64, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (n, *shape)).astype(np.float32)


def _cnn(second_padding="valid", head="flatten", *, one_d=False, dropout=False, seed=0):
    """Conv(6, same, relu) -> BN -> MaxPool -> [SpatialDropout] -> Conv(8, elu) -> head -> [Dropout] -> Dense(3)."""
    from deploykit.backend import keras, set_seed
    from tests.helpers import randomize_batchnorm

    set_seed(seed)
    L = keras.layers
    conv, pool, drop = (
        (L.Conv1D, L.MaxPooling1D, L.SpatialDropout1D) if one_d else (L.Conv2D, L.MaxPooling2D, L.SpatialDropout2D)
    )
    flat = L.Flatten() if head == "flatten" else (L.GlobalAveragePooling1D() if one_d else L.GlobalAveragePooling2D())
    model = keras.Sequential(
        [
            keras.Input((12, 2) if one_d else (8, 8, 2)),
            conv(6, 3, padding="same", activation="relu", name="c1"),
            L.BatchNormalization(name="bn"),
            pool(name="pool"),
            *([drop(0.2)] if dropout else []),
            conv(8, 3, padding=second_padding, activation="elu", name="c2"),
            flat,
            *([L.Dropout(0.2)] if dropout else []),
            L.Dense(3, activation="softmax", name="out"),
        ],
        name="cnn",
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name in ("c1", "c2", "out"):
            layer.set_weights([rng.normal(0, 0.4, w.shape).astype("float32") for w in layer.get_weights()])
    randomize_batchnorm(model, seed)
    return model


def _kill(model):
    """c1: ch0 constant relu(0) = 0, ch1 constant relu(0.5) (non-zero), ch2 no outgoing weights; c2: ch0 constant, ch3
    unread."""
    c1, c2, out = (model.get_layer(n) for n in ("c1", "c2", "out"))
    (k1, b1), (k2, b2), (k3, b3) = c1.get_weights(), c2.get_weights(), out.get_weights()
    k1[..., [0, 1]] = 0
    b1[0], b1[1] = 0.0, 0.5
    k2[..., 2, :] = 0
    k2[..., 0] = 0
    channels = k2.shape[-1]
    k3.reshape(-1, channels, k3.shape[-1])[:, 3] = 0  # every Flatten / pooled row of channel 3
    c1.set_weights([k1, b1])
    c2.set_weights([k2, b2])
    out.set_weights([k3, b3])
    return model


def _widths(model):
    return tuple(model.get_layer(n).filters for n in ("c1", "c2"))


@pytest.mark.parametrize(
    "padding, head, one_d, widths, kept",
    [
        (
            "valid",
            "flatten",
            False,
            (3, 6),
            (0, 0),
        ),  # c1 ch1's 0.5 folds into a valid conv's bias; c2 ch0 into the Dense
        ("valid", "global", False, (3, 6), (0, 0)),
        ("same", "flatten", False, (5, 6), (2, 0)),  # a padded conv: the (BN-shifted) non-zero constants stay
        ("valid", "flatten", True, (3, 6), (0, 0)),  # Conv1D
    ],
)
def test_dead_conv_channels_go_exactly(padding, head, one_d, widths, kept):
    model = _kill(_cnn(padding, head, one_d=one_d))
    before = [w.copy() for w in model.get_weights()]
    x = _x(model.input_shape[1:])
    small, report = compact(model, x)
    assert _widths(small) == widths
    assert report.max_abs_diff <= 1e-5
    assert report.skipped == {}
    assert [(l.name, l.neurons_after, l.constant_kept) for l in report.layers] == [
        ("c1", widths[0], kept[0]),
        ("c2", widths[1], kept[1]),
        ("out", 3, 0),
    ]
    positions = [int(np.prod(model.get_layer(n).output_shape[1:-1])) for n in ("c1", "c2")]
    k1, k2, k3 = (model.get_layer(n).get_weights()[0] for n in ("c1", "c2", "out"))
    assert report.macs_before == k1.size * positions[0] + k2.size * positions[1] + k3.size
    assert report.macs_after < report.macs_before
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # input untouched
    assert small.get_layer("bn").get_weights()[0].shape == (widths[0],)


@pytest.mark.parametrize("c2_bias, widths, kept", [(0.3, (5, 7), (2, 1)), (0.0, (5, 6), (2, 0))])
def test_mc_dropout_keeps_non_zero_constants_before_a_dropout(c2_bias, widths, kept):
    """Through SpatialDropout2D / Dropout a constant goes only when exactly 0 (BN shifts c1's zeros: they stay)."""
    model = _kill(_cnn(dropout=True))
    c2 = model.get_layer("c2")
    k, b = c2.get_weights()
    b[0] = c2_bias  # elu(0) = 0
    c2.set_weights([k, b])
    small, report = compact(model, _x((8, 8, 2)))
    assert _widths(small) == widths
    assert (report.layers[0].constant_kept, report.layers[1].constant_kept) == kept
    assert report.max_abs_diff <= 1e-5


def test_coupled_channels_are_skipped_with_a_reason():
    from tests.core.models import residual

    model = residual()
    c1 = model.get_layer("c1")
    k, b = c1.get_weights()
    k[..., 0], b[0] = 0, 0.0  # dead, but its channel is added to the skip: removing it would misalign the Add
    c1.set_weights([k, b])
    x = _x((8, 8, 2))
    small, report = compact(model, x)
    assert report.skipped == {
        "c0": "channels coupled: 'a' feeds 2 places (a fork)",
        "c1": "channels coupled: reaches Add 'add'",
    }
    assert all(l.neurons_after == l.neurons_before for l in report.layers)
    assert report.max_abs_diff <= 1e-5
    assert "c1 skipped: channels coupled: reaches Add 'add'" in report.summary()


def test_concatenate_couples_too():
    from deploykit.backend import keras

    L = keras.layers
    inputs = keras.Input((6, 6, 1))
    left = L.Conv2D(3, 3, name="left")(inputs)
    right = L.Conv2D(3, 3, name="right")(inputs)
    x = L.Conv2D(2, 1, name="mix")(L.Concatenate(name="cat")([left, right]))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(x)))
    _, report = compact(model, _x((6, 6, 1)))
    assert report.skipped["left"] == report.skipped["right"] == "channels coupled: reaches Concatenate 'cat'"
    assert "mix" not in report.skipped


def test_the_output_layer_is_no_skip_even_behind_a_softmax_layer():
    from deploykit.backend import keras

    L = keras.layers
    model = keras.Sequential(
        [keras.Input((6, 6, 1)), L.Conv2D(3, 3, name="c"), L.Flatten(), L.Dense(4, name="d"), L.Softmax(name="soft")]
    )
    _, report = compact(model, _x((6, 6, 1)))
    assert report.skipped == {}
