"""Pooled dropout masks: standard ops, the represented rate, independence within and across rows, MC agreement."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deploykit.core.chain import to_chain
from deploykit.core.graph import graph_from_model
from deploykit.errors import ConfigError
from deploykit.uncertainty.masks import DEFAULT_POOL, MaskKind, block_length, pool_keep, pool_table, represented_rate
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
from deploykit.uncertainty.mc_layers import MCGraph
from tests.uncertainty.support import assert_same_mean, run, session


def _mask_model(
    width: int, rate: float, pool: int = DEFAULT_POOL, seed: int | None = 1, opset: int = 17, as_bool: bool = False
):
    """``input`` [R, width] -> ``mask`` [R, width]: the pooled mask alone, as the MC graph emits it."""
    from onnx import TensorProto, helper

    g = MCGraph(seed, opset, MaskKind.POOL, pool)
    mask = pool_keep(g, "input", 2, width, rate, pool, g.table_rng(), as_bool=as_bool)
    g.op("Identity", [mask], output="mask")
    return g.model(
        "pool_mask",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["R", width])],
        [helper.make_tensor_value_info("mask", TensorProto.BOOL if as_bool else TensorProto.FLOAT, ["R", width])],
    )


def _keep(proto, rows: int, calls: int = 1, sess=None) -> np.ndarray:
    """Keep flags of ``calls`` calls on ``rows`` rows, stacked [calls * rows, W]."""
    sess = sess or session(proto)
    width = proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = np.ones((rows, width), np.float32)
    return np.concatenate([sess.run(["mask"], {"input": x})[0] > 0 for _ in range(calls)])


def _max_abs_corr(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """The largest |correlation| between a column of ``a`` and a column of ``b`` (of ``a``, diagonal excluded)."""

    def standard(v):
        return (v - v.mean(0)) / v.std(0)

    corr = standard(a).T @ standard(a if b is None else b) / len(a)
    if b is None:
        np.fill_diagonal(corr, 0)
    return float(np.abs(corr).max())


@pytest.mark.parametrize("opset", [13, 18])
def test_mask_is_valid_standard_onnx(opset):
    proto = _mask_model(30, 0.2, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} == {""}
    assert _keep(proto, 4).shape == (4, 30)


def test_table_has_the_exact_count_per_column_and_wraps_around():
    table, perm = pool_table(0.2, 784, 256, np.random.default_rng(0))
    b = block_length(784)
    nb = 784 // b
    assert table.shape == (256 + nb - 1, b) and table.dtype == np.uint8 and sorted(perm) == list(range(nb))
    assert np.all((table[:256] == 0).sum(axis=0) == round(0.2 * 256))
    assert np.array_equal(table[256:], table[: nb - 1])  # a window starting near the end wraps to the start


def test_block_length_divides_the_width_when_it_can():
    assert [block_length(w) for w in (784, 300, 100, 64)] == [28, 30, 25, 32]
    assert block_length(67) == 32 and block_length(10) == 10  # prime: cut; narrow: one block


@pytest.mark.parametrize("rate,pool", [(0.2, 4096), (0.5, 1024), (0.1, 16), (0.0, 4096)])
def test_every_element_keeps_at_the_represented_rate(rate, pool):
    assert abs(represented_rate(rate, pool) - rate) <= 0.5 / pool
    r = represented_rate(rate, pool)
    keep = _keep(_mask_model(100, rate, pool), rows=1000, calls=8)  # 8,000 rows
    if r == 0:
        assert keep.all()
        return
    se = np.sqrt(r * (1 - r) / len(keep))
    assert abs((1 - keep.mean()) - r) <= 5 * se / np.sqrt(keep.shape[1])
    assert np.abs((1 - keep.mean(axis=0)) - r).max() <= 5 * se  # every position, not only the average


def test_output_is_the_input_rescaled_by_the_represented_rate():
    scale = 1 / (1 - represented_rate(0.25, DEFAULT_POOL))
    mask = session(_mask_model(33, 0.25)).run(["mask"], {"input": np.ones((50, 33), np.float32)})[0]
    assert set(np.unique(mask)) <= {0.0, np.float32(scale)}
    keep = session(_mask_model(33, 0.25, as_bool=True)).run(["mask"], {"input": np.ones((50, 33), np.float32)})[0]
    assert keep.dtype == np.bool_ and keep.shape == (50, 33)


def test_positions_and_rows_are_uncorrelated():
    n = 6000
    keep = _keep(_mask_model(200, 0.2), rows=n).astype(np.float64)  # 8 blocks of 25 per row
    bound = 5 / np.sqrt(n)
    # Positions within a row: independent entries of one table, so over its K masks their correlation is
    # that of K i.i.d. pairs (order 1/sqrt(K), fixed at export) on top of the sampling error.
    assert _max_abs_corr(keep) <= 5 * np.sqrt(1 / n + 1 / DEFAULT_POOL)
    assert _max_abs_corr(keep[:-1], keep[1:]) <= bound  # any position of a row vs any of the next row
    half = n // 2
    assert _max_abs_corr(keep[:half], keep[half:]) <= 5 / np.sqrt(half)  # rows far apart in the call


def test_rows_share_a_mask_with_probability_one_over_the_pool():
    pool, rows = 64, 400
    keep = _keep(_mask_model(64, 0.3, pool=pool), rows=rows)
    _, counts = np.unique(keep, axis=0, return_counts=True)
    pairs = int((counts * (counts - 1) // 2).sum())
    expected = rows * (rows - 1) / 2 / pool  # 1,247 of 79,800 pairs
    assert abs(pairs - expected) <= 5 * np.sqrt(expected)
    assert len(counts) <= pool  # never more distinct masks than the pool


def test_seeds_repeat_per_session_and_draws_advance():
    proto = _mask_model(40, 0.2, seed=5)
    a, b = session(proto), session(proto)
    first = [_keep(proto, 50, sess=a) for _ in range(2)]
    assert np.array_equal(first[0], _keep(proto, 50, sess=b)) and not np.array_equal(first[0], first[1])
    unseeded = _mask_model(40, 0.2, seed=None)
    assert not np.array_equal(_keep(unseeded, 50), _keep(unseeded, 50))  # two sessions, one process: fresh draws


def _input_dropout_model():
    """Dropout on the input and on a hidden layer (the chapter's layout, small), untrained: outputs spread."""
    from deploykit.backend import keras, set_seed

    set_seed(3)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(64,)),
            L.Dropout(0.2),
            L.Dense(32, activation="elu"),
            L.Dropout(0.2),
            L.Dense(10, activation="softmax"),
        ]
    )


def test_mc_outputs_match_the_dropout_masks(digits):
    model = _input_dropout_model()
    x = digits.x_test[:2] / 4.0
    outs = {}
    for mask in (MaskKind.POOL, MaskKind.DROPOUT):
        config = MCConfig(samples=1000, max_samples=1000, include_samples=True, seed=11, mask=mask)
        outs[mask] = run(session(build_mc_graph(to_chain(model), config)), x)["sample_probabilities"].astype(np.float64)
    pool, plain = outs[MaskKind.POOL], outs[MaskKind.DROPOUT]
    assert plain.std(axis=0).max() > 0.02  # the test has something to compare
    assert_same_mean(pool, plain)  # mean probabilities within 5 Monte Carlo standard errors
    assert_same_mean((pool - pool.mean(0)) ** 2, (plain - plain.mean(0)) ** 2)  # and their variances


def _conv_dropout_model():
    """Dropout on feature maps [N, H, W, C] (every element) and SpatialDropout2D (whole channels)."""
    from deploykit.backend import keras, set_seed

    set_seed(5)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1)),
            L.Conv2D(4, 3, activation="elu"),
            L.Dropout(0.3),
            L.Conv2D(4, 3, activation="elu"),
            L.SpatialDropout2D(0.3),
            L.GlobalAveragePooling2D(),
            L.Dense(3, activation="softmax"),
        ]
    )


def test_feature_map_dropout_masks_every_element_like_onnx_dropout(digits):
    model = _conv_dropout_model()
    x = digits.x_test[:2].reshape(2, 8, 8, 1) / 8.0
    outs = {}
    for mask in (MaskKind.POOL, MaskKind.DROPOUT):
        config = MCConfig(samples=1000, max_samples=1000, include_samples=True, seed=13, mask=mask)
        proto = build_mc_graph(graph_from_model(model), config)
        outs[mask] = run(session(proto), x)["sample_probabilities"].astype(np.float64)
    pool, plain = outs[MaskKind.POOL], outs[MaskKind.DROPOUT]
    assert plain.std(axis=0).max() > 0.01
    assert_same_mean(pool, plain)
    assert_same_mean((pool - pool.mean(0)) ** 2, (plain - plain.mean(0)) ** 2)  # whole channels would differ here


def test_one_dropout_node_draws_a_few_bits_per_row_for_every_layer_and_samples_stays_optional(digits):
    model = _input_dropout_model()
    proto = build_mc_graph(to_chain(model), MCConfig(samples=5, include_samples=True, mask=MaskKind.POOL))
    (drop,) = [n for n in proto.graph.node if n.op_type == "Dropout"]  # one node for both layers
    bits = next(n for n in proto.graph.node if drop.input[0] in n.output)
    assert bits.op_type == "Slice"  # of the first layer's input: 2 layers x (12 + 1) columns, not 64 + 32 draws
    ends = next(i for i in proto.graph.initializer if i.name == bits.input[2])
    assert onnx.numpy_helper.to_array(ends).tolist() == [2 * (12 + 1)]
    sess = session(proto)
    x = digits.x_test[:3]
    assert run(sess, x)["sample_probabilities"].shape == (5, 3, 10)
    assert run(sess, x, samples=17)["sample_probabilities"].shape == (17, 3, 10)


def test_mc_config_mask_round_trips_and_validates():
    config = MCConfig(mask="dropout", pool=1024)
    assert config.mask is MaskKind.DROPOUT and MCConfig().mask is MaskKind.AUTO
    assert config.to_dict()["mask"] == "dropout" and MCConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="mask must be one of 'auto', 'pool', 'dropout'"):
        MCConfig(mask="bits")
    with pytest.raises(ConfigError, match="pool must be a power of two"):
        MCConfig(pool=1000)
    with pytest.raises(ConfigError, match="pool must be an integer"):
        MCConfig(pool=8)


def test_auto_pools_the_masks_only_where_the_tables_are_small_beside_the_weights():
    """AUTO: the chapter's 784-300-100 model (1.07 MB of weights, three tables of ~0.13 MB) gets pooled masks;
    a 64-32 model (a few KB of weights) keeps ONNX Dropout rather than grow its file several times."""
    from deploykit.backend import keras
    from deploykit.core.graph import graph_from_model
    from deploykit.uncertainty.masks import table_bytes
    from deploykit.uncertainty.mc_graph import mask_kind

    L = keras.layers
    chapter = keras.Sequential(
        [
            keras.Input((784,)),
            L.Dropout(0.2),
            L.Dense(300, activation="elu"),
            L.Dropout(0.2),
            L.Dense(100, activation="elu"),
            L.Dropout(0.2),
            L.Dense(10, activation="softmax"),
        ]
    )
    small = _input_dropout_model()
    assert mask_kind(graph_from_model(chapter), MCConfig()) is MaskKind.POOL
    assert mask_kind(graph_from_model(small), MCConfig()) is MaskKind.DROPOUT
    assert mask_kind(graph_from_model(small), MCConfig(mask="pool")) is MaskKind.POOL  # asked for: kept
    assert sum(table_bytes(w, DEFAULT_POOL) for w in (784, 300, 100)) < 0.5 * 4 * chapter.count_params()
    ops = {n.op_type for n in build_mc_graph(to_chain(small), MCConfig()).graph.node}
    assert "Gather" not in ops and "Dropout" in ops
