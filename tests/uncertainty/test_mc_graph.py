"""The MC Dropout graph: deterministic limit, sampling, seeds, prefix optimisation, Keras agreement."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.chain import to_chain
from deploykit.uncertainty.masks import MaskKind, represented_rate
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
from tests.uncertainty.support import (
    assert_same_mean,
    keras_mc_samples,
    run,
    session,
    zero_dropout,
    zero_graph_dropout,
)


def _deterministic_onnx(model, x):
    from deploykit.export.convert import keras_to_onnx

    return session(keras_to_onnx(model)).run(["probabilities"], {"input": x})[0]


@pytest.mark.parametrize("fixture", ["mc_bn_model", "mc_selu_model"])
def test_rate_zero_equals_deterministic_onnx(request, digits, fixture):
    model = request.getfixturevalue(fixture)
    x = digits.x_test[:64]
    out = run(session(build_mc_graph(zero_dropout(to_chain(model)), MCConfig(samples=3))), x)
    reference = _deterministic_onnx(model, x)
    assert np.abs(out["mean"] - reference).max() <= 1e-5
    assert np.abs(out["mean"] - model(x, training=False).numpy()).max() <= 1e-5
    assert out["std"].max() <= 1e-5 and out["mutual_information"].max() <= 1e-5
    assert np.array_equal(out["predicted_class"], reference.argmax(axis=1))


def test_outputs_vary_between_calls(digits, mc_model_path):
    sess = session(mc_model_path)
    a, b = run(sess, digits.x_test[:8]), run(sess, digits.x_test[:8])
    assert not np.array_equal(a["mean"], b["mean"])
    assert a["std"].max() > 0.01 and a["mutual_information"].max() > 0


def test_fixed_seed_repeats_per_session(digits, mc_bn_model):
    x = digits.x_test[:8]
    proto = build_mc_graph(to_chain(mc_bn_model), MCConfig(samples=10, seed=7))
    first, second = session(proto), session(proto)
    calls_a = [run(first, x)["mean"] for _ in range(2)]
    calls_b = [run(second, x)["mean"] for _ in range(2)]
    assert np.array_equal(calls_a[0], calls_b[0]) and np.array_equal(calls_a[1], calls_b[1])
    assert not np.array_equal(calls_a[0], calls_a[1])  # a session's generator advances
    other = run(session(build_mc_graph(to_chain(mc_bn_model), MCConfig(samples=10, seed=8))), x)["mean"]
    assert not np.array_equal(other, calls_a[0])


def test_samples_input_is_optional_and_clamped(digits, mc_model_path):
    sess = session(mc_model_path)
    assert [i.name for i in sess.get_inputs()] == ["input", "samples"] and not sess.get_overridable_initializers()
    x = digits.x_test[:3]
    assert run(sess, x)["sample_probabilities"].shape == (20, 3, 10)  # the export's default
    assert run(sess, x, samples=7)["sample_probabilities"].shape == (7, 3, 10)
    assert run(sess, x, samples=0)["sample_probabilities"].shape == (1, 3, 10)
    assert run(sess, x, samples=10**6)["sample_probabilities"].shape == (1000, 3, 10)


def test_reductions_match_the_samples(digits, mc_model_path):
    out = run(session(mc_model_path), digits.x_test[:16], samples=50)
    p = out["sample_probabilities"].astype(np.float64)
    mean = p.mean(axis=0)

    def entropy(q, axis):
        return -(q * np.log(np.maximum(q, 1e-30))).sum(axis=axis)

    assert np.abs(out["mean"] - mean).max() <= 1e-6
    assert np.abs(out["std"] - p.std(axis=0)).max() <= 1e-5
    assert np.abs(out["predictive_entropy"] - entropy(mean, 1)).max() <= 1e-5
    mutual = entropy(mean, 1) - entropy(p, 2).mean(axis=0)
    assert np.abs(out["mutual_information"] - np.maximum(mutual, 0)).max() <= 1e-5
    assert np.array_equal(out["predicted_class"], mean.argmax(axis=1))
    assert out["predicted_class"].dtype == np.int64


def test_prefix_optimisation_gives_the_same_distribution(digits, mc_bn_model):
    chain = to_chain(mc_bn_model)
    config = MCConfig(samples=3000, include_samples=True, max_samples=3000)
    once, whole = build_mc_graph(chain, config), build_mc_graph(chain, config, prefix_once=False)
    # the prefix graph tiles after the first Dense; the other tiles the input
    ops = [[n.op_type for n in p.graph.node] for p in (once, whole)]
    assert "MatMul" in ops[0][: ops[0].index("Tile")] and "MatMul" not in ops[1][: ops[1].index("Tile")]
    x = digits.x_test[:6]
    a = run(session(once), x)["sample_probabilities"].astype(np.float64)
    b = run(session(whole), x)["sample_probabilities"].astype(np.float64)
    assert_same_mean(a, b)
    assert_same_mean((a - a.mean(axis=0)) ** 2, (b - b.mean(axis=0)) ** 2)  # same variance


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["mc_plain_model", "mc_selu_model"])
def test_mc_mean_agrees_with_the_keras_loop(request, digits, fixture):
    model = request.getfixturevalue(fixture)  # no BN: training=True only switches dropout on
    x = digits.x_test[:12]
    config = MCConfig(samples=2000, include_samples=True, max_samples=2000)
    ours = run(session(build_mc_graph(to_chain(model), config)), x)["sample_probabilities"].astype(np.float64)
    assert_same_mean(ours, keras_mc_samples(model, x, 200))


@pytest.mark.parametrize("mask", [MaskKind.POOL, MaskKind.DROPOUT])
def test_alpha_dropout_keeps_mean_and_variance_like_keras(mask):
    from onnx import TensorProto, helper

    from deploykit.backend import keras, set_seed

    set_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input(shape=(32,)), L.AlphaDropout(0.2), L.Dense(3, activation="softmax")])
    config = MCConfig(samples=30, mask=mask)
    proto = build_mc_graph(to_chain(model), config)
    nodes = list(proto.graph.node)
    where = next(n for n in nodes if n.op_type == "Where")
    scaled = next(n for n in nodes if where.output[0] in n.input)
    shifted = next(n for n in nodes if scaled.output[0] in n.input)
    proto.graph.output.append(helper.make_tensor_value_info(shifted.output[0], TensorProto.FLOAT, ["M", 32]))

    x = np.random.default_rng(0).standard_normal((1000, 32)).astype(np.float32)
    sess = session(proto)
    y = sess.run([shifted.output[0]], {"input": x})[0].astype(np.float64)  # [T * N, 32]
    n = y.size / 30  # the inputs repeat over the 30 samples: count independent inputs only
    assert abs(y.mean()) <= 5 / np.sqrt(n)
    assert abs(y.var() - 1.0) <= 5 * np.sqrt(2 / n)

    # the same two values per element as Keras: a*x + b when kept, a*alpha_p + b when dropped
    # (a pooled mask drops at its represented rate, round(0.2 * pool) / pool, and corrects for that rate)
    keras_y = np.asarray(model.layers[0](x, training=True), dtype=np.float64)
    alpha_p = -1.6732632423543772 * 1.0507009873554805
    rate = 0.2 if mask is MaskKind.DROPOUT else represented_rate(0.2, config.pool)
    for values, inputs, r in ((y, np.tile(x, (30, 1)), rate), (keras_y, x, 0.2)):
        a = ((1 - r) * (1 + r * alpha_p**2)) ** -0.5
        b = -a * alpha_p * r
        is_kept = np.abs(values - (a * inputs + b)) <= 1e-5
        assert np.all(is_kept | (np.abs(values - (a * alpha_p + b)) <= 1e-5))
        assert abs((1 - is_kept.mean()) - r) <= 5 * np.sqrt(r * (1 - r) / is_kept.size)


def test_activation_layers_match_keras(digits):
    from deploykit.backend import keras, set_seed

    set_seed(4)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8)),
            L.Flatten(),
            L.Dense(24, activation="tanh"),
            L.Dropout(0.1),
            L.Dense(24, activation="gelu"),
            L.LeakyReLU(0.2),
            L.Dense(24, activation="swish"),
            L.PReLU(),
            L.Dense(24),
            L.ReLU(max_value=2.0),
            L.Dense(24),
            L.ELU(0.7),
            L.Dense(24, activation="softplus"),
            L.Activation("sigmoid"),
            L.Reshape((4, 6)),
            L.Flatten(),
            L.Dense(24, activation="mish"),
            L.Dense(24, activation="hard_sigmoid"),
            L.Dense(24, activation="softsign"),
            L.Dense(24, activation="relu6"),
            L.Dense(24, activation="leaky_relu"),
            L.Dense(24, activation="log_softmax"),
            L.Dense(24, activation="selu"),
            L.Dense(24, activation="exponential"),
            L.Dense(5),
            L.Softmax(),
        ]
    )
    model.layers[6].set_weights([np.random.default_rng(0).uniform(-0.5, 0.5, (24,)).astype("float32")])
    x = digits.x_test[:32].reshape(-1, 8, 8) / 8.0
    out = run(session(build_mc_graph(zero_dropout(to_chain(model)))), x)
    assert np.abs(out["mean"] - model(x, training=False).numpy()).max() <= 1e-5


# --- graphs: convolutions, residual skips, opsets, the optional `samples` input -------------------------


def _graph_inputs(model, n=6):
    rng = np.random.default_rng(1)
    if type(model.layers[0]).__name__ == "Embedding":
        return rng.integers(0, 20, (n, *model.input_shape[1:])).astype("float32")
    return rng.normal(size=(n, *model.input_shape[1:])).astype("float32")


@pytest.mark.parametrize("build", ["cnn", "residual", "every_layer", "embedding"])
@pytest.mark.parametrize("opset", [13, 15, 18])
def test_graph_mc_with_rates_zero_equals_the_deterministic_model(build, opset):
    import onnx

    from deploykit.core.graph import graph_from_model
    from tests.core import models

    model = models.shared(build)  # read only: built once per process
    proto = build_mc_graph(zero_graph_dropout(graph_from_model(model)), MCConfig(samples=4), opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    x = _graph_inputs(model)
    out = run(session(proto), x)
    assert np.abs(out["mean"] - model(x, training=False).numpy()).max() <= 1e-5
    assert out["std"].max() <= 1e-5


def test_residual_mc_tiles_the_skip_edge_and_samples_spatial_dropout():
    from deploykit.core.graph import graph_from_model
    from deploykit.uncertainty.mc_graph import first_dropout_index, sampled_nodes
    from tests.core import models

    model = models.residual(dropout=0.3)
    graph = graph_from_model(model)
    assert sampled_nodes(graph) == {"sdrop", "gap", "drop", "out"} and first_dropout_index(graph) == 7
    x = _graph_inputs(model, 4)
    out = run(session(build_mc_graph(graph, MCConfig(samples=200, include_samples=True))), x)
    assert out["std"].max() > 1e-3
    # Keras in training mode would also switch BatchNorm to batch statistics: sample the folded twin instead.
    from deploykit.fold import fold_batchnorm

    folded, _ = fold_batchnorm(model)
    assert_same_mean(out["sample_probabilities"].astype(np.float64), keras_mc_samples(folded, x, 200))


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_reduce_mean_matches_the_opset(opset):
    from deploykit.core.graph import graph_from_model
    from tests.core import models

    proto = build_mc_graph(graph_from_model(models.shared("cnn")), MCConfig(), opset=opset)
    means = [n for n in proto.graph.node if n.op_type == "ReduceMean"]
    assert means and all(bool([a for a in n.attribute if a.name == "axes"]) == (opset < 18) for n in means)
    assert all(len(n.input) == (2 if opset >= 18 else 1) for n in means)


def test_samples_default_warns_no_one_and_omitting_or_feeding_it_works(capfd):
    import onnxruntime as ort

    from deploykit.core.graph import graph_from_model
    from tests.core import models

    proto = build_mc_graph(graph_from_model(models.shared("cnn")), MCConfig(samples=5, include_samples=True))
    capfd.readouterr()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])  # default log level
    x = _graph_inputs(models.shared("cnn"), 2)
    assert sess.run(["sample_probabilities"], {"input": x})[0].shape == (5, 2, 3)
    assert sess.run(["sample_probabilities"], {"input": x, "samples": np.array(7, np.int64)})[0].shape == (7, 2, 3)
    captured = capfd.readouterr()
    assert "Initializer" not in captured.err + captured.out and not sess.get_overridable_initializers()
