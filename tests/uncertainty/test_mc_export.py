"""export_mc_onnx: metadata, folded / pruned / int8-dynamic models, refused inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deploykit.core.chain import from_chain, to_chain
from deploykit.errors import ConfigError, UnsupportedLayerError, UsageError
from deploykit.export.metadata import read_metadata
from deploykit.uncertainty import MCConfig, export_mc_onnx
from deploykit.uncertainty.mc_graph import build_mc_graph
from tests.uncertainty.support import assert_same_mean, keras_mc_samples, run, session, zero_dropout


def test_record_and_metadata(tmp_path, mc_bn_model):
    path = tmp_path / "m.onnx"
    record = export_mc_onnx(mc_bn_model, path, samples=12, seed=3, class_names=list("abcdefghij"))
    meta = read_metadata(path)
    assert (meta.kind, meta.default_samples, meta.max_samples) == ("mc_dropout", 12, 1000)
    assert meta.class_names == list("abcdefghij") and meta.input_shape == [64]
    assert record.layers_run_once == 3  # Normalization, Dense, BN run once
    dropouts = [l.name for l in mc_bn_model.layers if type(l).__name__ == "Dropout"]
    assert record.dropout_layers == [f"{name} (Dropout, 0.2)" for name in dropouts] and len(dropouts) == 2
    assert record.size_bytes == path.stat().st_size and record.to_dict()["config"]["seed"] == 3
    outputs = [o.name for o in onnx.load(str(path)).graph.output]
    assert outputs == ["mean", "std", "predictive_entropy", "mutual_information", "predicted_class"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.slow
def test_folded_model(digits, mc_bn_model):
    from deploykit.fold import fold_batchnorm

    folded, _ = fold_batchnorm(mc_bn_model)
    chain = to_chain(folded)
    assert not any(s.class_name == "BatchNormalization" for s in chain.layers)
    x = digits.x_test[:12]
    deterministic = run(session(build_mc_graph(zero_dropout(chain))), x)["mean"]
    assert np.abs(deterministic - folded(x, training=False).numpy()).max() <= 1e-5
    config = MCConfig(samples=2000, max_samples=2000, include_samples=True)
    ours = run(session(build_mc_graph(chain, config)), x)["sample_probabilities"].astype(np.float64)
    assert_same_mean(ours, keras_mc_samples(folded, x, 200))  # folded: no BN, so training=True is the MC loop


def test_pruned_model(digits, mc_plain_model):
    from deploykit.export.convert import keras_to_onnx

    chain = to_chain(mc_plain_model)
    for spec in chain.layers:
        if spec.class_name == "Dense":
            kernel = spec.weights[0]
            spec.weights[0] = np.where(np.abs(kernel) >= np.quantile(np.abs(kernel), 0.8), kernel, 0).astype(np.float32)
    pruned = from_chain(chain)
    x = digits.x_test[:32]
    out = run(session(build_mc_graph(zero_dropout(chain))), x)
    reference = session(keras_to_onnx(pruned)).run(["probabilities"], {"input": x})[0]
    assert np.abs(out["mean"] - reference).max() <= 1e-5
    sampled = session(build_mc_graph(chain))
    assert not np.array_equal(run(sampled, x)["mean"], run(sampled, x)["mean"])


def test_int8_dynamic_keeps_sampling(tmp_path, digits, mc_plain_model):
    path = tmp_path / "q.onnx"
    record = export_mc_onnx(mc_plain_model, path, samples=1000, quantization="int8-dynamic")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"MatMulInteger", "Dropout"} <= ops and "MatMul" not in ops
    assert read_metadata(path).quantization == "int8-dynamic" and record.quantization == "int8-dynamic"
    x = digits.x_test[:16]
    sess = session(path)
    a, b = run(sess, x), run(sess, x)
    assert not np.array_equal(a["mean"], b["mean"]) and a["std"].max() > 0.01
    float_mean = run(session(build_mc_graph(to_chain(mc_plain_model), MCConfig(samples=1000))), x)["mean"]
    assert np.abs(a["mean"] - float_mean).mean() <= 0.02


def test_no_dropout_is_refused(tmp_path, digits):
    from tests.helpers import build_dense

    path = tmp_path / "m.onnx"
    for model in (build_dense(dropout=0), build_dense(dropout=0, data=digits)):
        with pytest.raises(UsageError, match="no Dropout or AlphaDropout.*train it with dropout"):
            export_mc_onnx(model, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"samples": 0}, "samples must be an integer >= 1"),
        ({"samples": 2000}, "samples must be at most max_samples"),
        ({"max_samples": 0}, "max_samples must be an integer >= 1"),
        ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\] or unset, got -1"),
        ({"samples": 2.5}, "samples must be an integer"),
    ],
)
def test_bad_options_are_refused(tmp_path, mc_bn_model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        export_mc_onnx(mc_bn_model, tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_other_refusals(tmp_path, mc_bn_model):
    from deploykit.backend import keras

    with pytest.raises(UsageError, match="quantization must be one of"):
        export_mc_onnx(mc_bn_model, tmp_path / "m.onnx", quantization="float16")
    with pytest.raises(UsageError, match="3 class names given, but the model has 10 classes"):
        export_mc_onnx(mc_bn_model, tmp_path / "m.onnx", class_names=["a", "b", "c"])
    grid = keras.Sequential(
        [keras.Input(shape=(4,)), keras.layers.Dropout(0.2), keras.layers.Dense(4), keras.layers.Reshape((2, 2))]
    )  # logits are served (issue 12), a grid of outputs is not
    with pytest.raises(UnsupportedLayerError, match="one vector per row"):
        export_mc_onnx(grid, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_unknown_activation_is_refused(mc_plain_model):
    chain = to_chain(mc_plain_model)
    chain.layers[1].config["activation"] = "crelu"
    with pytest.raises(UnsupportedLayerError, match="'dense.*activation 'crelu' has no ONNX form"):
        build_mc_graph(chain)


def test_config_round_trip():
    config = MCConfig(samples=5, max_samples=50, seed=1, include_samples=True)
    assert MCConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="MCConfig: unknown key 'sample'"):
        MCConfig.from_dict({"sample": 3})


def test_residual_graph_exports_with_its_sampled_region(tmp_path):
    from tests.core import models

    model = models.residual(dropout=0.2)
    record = export_mc_onnx(model, tmp_path / "res_mc.onnx", samples=8, seed=1, opset=18)
    assert record.dropout_layers == ["sdrop (SpatialDropout2D, 0.2)", "drop (Dropout, 0.2)"]
    assert record.layers_run_once == 7 and record.opset == 18
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 2)).astype("float32")
    out = run(session(record.path), x)
    assert out["mean"].shape == (3, 3) and np.allclose(out["mean"].sum(axis=1), 1.0, atol=1e-5)
