"""Cost-aware structured shares: the multiply-adds of a uniform share, the units taken where they cost the most."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import ConfigError
from deploykit.sparsity import StructuredConfig
from deploykit.sparsity.allocate import Candidate, allocate, macs_after, uniform_drops

#: The book's network: 784 -> 300 -> 100 -> 10, the kernels' multiply-adds per example.
BOOK_MACS = {"h1": 784 * 300, "h2": 300 * 100, "out": 100 * 10}


def _book(seed: int = 0) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    return [Candidate("h1", rng.uniform(0.5, 1.5, 300), "h2"), Candidate("h2", rng.uniform(0.5, 1.5, 100), "out")]


def test_the_expensive_layer_loses_more_and_the_uniform_share_s_macs_are_reached():
    candidates = _book()
    uniform = uniform_drops(candidates, {"h1": 0.8, "h2": 0.8})
    assert uniform == {"h1": 240, "h2": 80}
    target = macs_after(BOOK_MACS, candidates, uniform)
    assert target == pytest.approx(60 * 784 + 60 * 20 + 20 * 10)  # what compact would leave: the formula is the graph's
    drops = allocate(BOOK_MACS, candidates, target)
    assert macs_after(BOOK_MACS, candidates, drops) <= target * (1 + 1e-9)
    # the first layer (88 % of the MACs) loses a larger share than the cheap second one
    assert drops["h1"] / 300 > 0.8 > drops["h2"] / 100
    # and no more than needed: putting back any one unit goes over the target
    for name in drops:
        if drops[name]:
            assert macs_after(BOOK_MACS, candidates, {**drops, name: drops[name] - 1}) > target


def test_an_unimportant_cheap_layer_still_loses_units_and_every_layer_keeps_one():
    candidates = _book()
    # the second layer's units are all alike but a few are worth nothing: they go first though they save little
    h2 = np.ones(100)
    h2[:5] = 0.0
    candidates[1] = Candidate("h2", h2, "out")
    drops = allocate(BOOK_MACS, candidates, macs_after(BOOK_MACS, candidates, {"h1": 150, "h2": 0}))
    assert drops["h2"] >= 5
    # an unreachable target: each layer keeps one unit
    assert allocate(BOOK_MACS, candidates, 0.0) == {"h1": 299, "h2": 99}


def test_the_allocation_in_a_model_graph_spares_the_output_and_coupled_channels():
    """A Dense net with a residual pair (coupled units) and a cheap bottleneck; no training needed to plan."""
    from deploykit.backend import keras, set_seed
    from deploykit.core.graph import graph_from_model
    from deploykit.sparsity.structured import _plans

    set_seed(0)
    inputs = keras.Input((64,))
    wide = keras.layers.Dense(48, activation="relu", name="wide")(inputs)
    narrow = keras.layers.Dense(8, activation="relu", name="narrow")(wide)
    a = keras.layers.Dense(6, activation="relu", name="a")(narrow)
    b = keras.layers.Dense(6, activation="relu", name="b")(a)
    merged = keras.layers.Add()([a, b])
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(merged)
    model = keras.Model(inputs, outputs)
    graph = graph_from_model(model)
    chosen = ["wide", "narrow", "a", "b"]
    config = StructuredConfig(fraction=0.5, allocate="cost")
    plans, skipped, whole = _plans(graph, chosen, config)
    drops = {p.layer: len(p.removed) for p in plans}
    assert set(skipped) == {"a", "b"} and all("coupled" in why for why in skipped.values())
    assert "out" not in drops and "out" not in whole  # the output layer is never a candidate
    macs = {"wide": 64 * 48, "narrow": 48 * 8, "a": 8 * 6, "b": 6 * 6, "out": 6 * 3}
    kept = {"wide": 48 - drops.get("wide", 0), "narrow": 8 - drops.get("narrow", 0)}
    after = 64 * kept["wide"] + kept["wide"] * kept["narrow"] + kept["narrow"] * 6 + 6 * 6 + 6 * 3
    assert after <= 64 * 24 + 24 * 4 + 4 * 6 + 6 * 6 + 6 * 3 < sum(macs.values())  # uniform 50 %'s MACs reached
    assert drops["wide"] > 24  # the costly layer loses more than half, the cheap one less
    assert drops.get("narrow", 0) < 4
    # a layer with its own share keeps it; the others make up the rest of the cut
    plans, _, _ = _plans(graph, chosen, StructuredConfig(fraction=0.5, allocate="cost", layer_fraction={"wide": 0.25}))
    assert {p.layer: len(p.removed) for p in plans}["wide"] == 12
    # uniform: the same share of each layer, as before
    plans, _, _ = _plans(graph, chosen, StructuredConfig(fraction=0.5))
    assert {p.layer: len(p.removed) for p in plans} == {"wide": 24, "narrow": 4}


def test_allocate_is_checked():
    with pytest.raises(ConfigError, match="allocate must be one of cost, uniform"):
        StructuredConfig(allocate="greedy")


def test_the_removed_rows_stay_zero_through_training():
    """The hold is one traced call per batch: it must really put the rows back to zero while Keras trains."""
    from deploykit.backend import keras, set_seed
    from deploykit.sparsity.structured import _holding

    set_seed(0)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, name="out")(keras.layers.Dense(3, name="h")(inputs))
    model = keras.Model(inputs, outputs)
    mask = np.ones((3, 2), np.float32)
    mask[1] = 0
    model.compile(keras.optimizers.Adam(0.1), "mse")
    x = np.random.default_rng(0).random((64, 4), np.float32)
    model.fit(x, x[:, :2] + 1, epochs=2, batch_size=16, callbacks=[_holding({"out": mask})], verbose=0)
    kernel = model.get_layer("out").kernel.numpy()
    assert np.all(kernel[1] == 0) and np.all(kernel[[0, 2]] != 0)
