"""TrainConfig: validated on construction (ConfigError naming the field), round-trips through dicts and TOML."""

from __future__ import annotations

import json

import pytest
import tomli_w
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.errors import ConfigError, UsageError
from deploykit.training.presets import BN_MIN_DEPTH, BatchNorm, Optimizer, Preset, TrainConfig


@settings(max_examples=30, deadline=None)
@given(
    preset=st.sampled_from(["default", "selu"]),
    hidden=st.lists(st.integers(1, 512), max_size=5),
    dropout=st.floats(0, 0.95),
    dropout_layers=st.one_of(st.just("all"), st.integers(1, 6)),
    batchnorm=st.sampled_from(["auto", "off"]),
    optimizer=st.sampled_from(list(Optimizer)),
    rate=st.one_of(st.just("auto"), st.floats(1e-6, 10)),
    l2=st.floats(0, 1),
    epochs=st.integers(1, 500),
)
def test_round_trips_through_json_and_toml(
    preset, hidden, dropout, dropout_layers, batchnorm, optimizer, rate, l2, epochs
):
    config = TrainConfig(
        preset=preset,
        hidden=tuple(hidden),
        dropout=dropout,
        dropout_layers=dropout_layers,
        batchnorm=batchnorm,
        optimizer=optimizer,
        learning_rate=rate,
        l2=l2,
        epochs=epochs,
    )
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig.from_dict(tomllib.loads(tomli_w.dumps(config.to_dict()))) == config


def test_accepts_the_cli_spellings():
    config = TrainConfig(preset="SELU", hidden="100, 50", dropout_layers="top2", optimizer="sgd", batchnorm="off")
    assert config.preset is Preset.SELU
    assert config.hidden == (100, 50)
    assert config.dropout_layers == 2
    assert config.optimizer is Optimizer.SGD
    assert config.batchnorm is BatchNorm.OFF


@pytest.mark.parametrize(
    "options, field",
    [
        ({"preset": "relu"}, "preset"),
        ({"hidden": (64, 0)}, "hidden"),
        ({"hidden": "64,x"}, "hidden"),
        ({"hidden": (64, True)}, "hidden"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": float("nan")}, "dropout"),
        ({"dropout_layers": "top0"}, "dropout_layers"),
        ({"dropout_layers": "some"}, "dropout_layers"),
        ({"batchnorm": "maybe"}, "batchnorm"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"patience": True}, "patience"),
        ({"l2": -1e-4}, "l2"),
        ({"seed": -1}, "seed"),
        ({"preset": "selu", "batchnorm": "on"}, "batchnorm"),
    ],
)
def test_bad_values_name_the_field(options, field):
    with pytest.raises(ConfigError, match=field) as info:
        TrainConfig(**options)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UsageError)  # the CLI exits 2


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="'hiden'"):
        TrainConfig.from_dict({"hiden": [64]})
    with pytest.raises(ConfigError, match="table"):
        TrainConfig.from_dict([("hidden", [64])])


def test_batchnorm_rule():
    deep = (32,) * BN_MIN_DEPTH
    shallow = (32,) * (BN_MIN_DEPTH - 1)
    assert TrainConfig(hidden=deep).use_batchnorm
    assert not TrainConfig(hidden=shallow).use_batchnorm
    assert TrainConfig(hidden=shallow, batchnorm="on").use_batchnorm
    assert not TrainConfig(hidden=deep, batchnorm="off").use_batchnorm
    assert not TrainConfig(hidden=deep, preset="selu").use_batchnorm


@pytest.mark.parametrize(
    "dropout, layers, expected",
    [
        (0.2, "all", [True, True, True]),
        (0.2, 2, [False, True, True]),
        (0.2, 1, [False, False, True]),
        (0.2, 5, [True, True, True]),  # more than the net has: every layer
        (0.0, "all", [False, False, False]),
    ],
)
def test_dropout_placement(dropout, layers, expected):
    config = TrainConfig(hidden=(16, 16, 16), dropout=dropout, dropout_layers=layers)
    assert [config.dropout_after(i) for i in range(3)] == expected
