"""PruneConfig / L1Config: validated on construction, round-trip through plain dicts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.errors import ConfigError
from deploykit.sparsity import L1Config, PruneConfig
from deploykit.sparsity.config import parse_block_size


@settings(max_examples=25, deadline=None)
@given(
    target=st.floats(0, 0.999),
    layers=st.dictionaries(st.text("abcdef_", min_size=1, max_size=8), st.floats(0, 0.999), max_size=3),
    block=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    skip=st.lists(st.text("xyz", min_size=1, max_size=4), max_size=3),
    epochs=st.integers(1, 50),
)
def test_prune_config_round_trips(target, layers, block, skip, epochs):
    config = PruneConfig(
        target_sparsity=target, layer_sparsity=layers, block_size=block, skip_layers=tuple(skip), epochs=epochs
    )
    assert PruneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.target_for("not-there") == target


def test_l1_config_round_trips():
    config = L1Config(l1=1e-3, threshold=0.02, skip_output=False, learning_rate=1e-3)
    assert L1Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "options, message",
    [
        ({"target_sparsity": 1.0}, "target_sparsity must be a number in \\[0, 1\\)"),
        ({"target_sparsity": -0.01}, "target_sparsity"),
        ({"target_sparsity": float("nan")}, "target_sparsity"),
        ({"target_sparsity": True}, "target_sparsity"),
        ({"layer_sparsity": {"dense": 1.0}}, "layer_sparsity\\['dense'\\]"),
        ({"layer_sparsity": [("dense", 0.5)]}, "layer_sparsity must be a table"),
        ({"block_size": "1x0"}, "block_size"),
        ({"block_size": (1.5, 4)}, "block_size"),
        ({"block_size": "4"}, "block_size"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"end_fraction": 0.0}, "end_fraction"),
        ({"skip_layers": "dense"}, "skip_layers must be a list of names, got 'dense'"),
        ({"skip_output": "no"}, "skip_output must be true or false"),
    ],
)
def test_prune_config_rejects(options, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**options)


def test_from_dict_names_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key 'sparsity'"):
        PruneConfig.from_dict({"sparsity": 0.5})
    with pytest.raises(ConfigError, match="L1Config: expected a table"):
        L1Config.from_dict([("l1", 1e-3)])


def test_block_size_forms():
    assert parse_block_size("1x4") == parse_block_size([1, 4]) == parse_block_size((1, 4)) == (1, 4)
    assert PruneConfig(block_size="2X2").block_size == (2, 2)


def test_with_options_keeps_the_rest():
    base = PruneConfig(target_sparsity=0.5, epochs=3)
    assert base.with_options(target_sparsity=None, epochs=7) == PruneConfig(target_sparsity=0.5, epochs=7)
    with pytest.raises(ConfigError):
        base.with_options(target_sparsity=2.0)
