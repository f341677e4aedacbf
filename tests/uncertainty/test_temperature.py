"""Temperature scaling: the fit recovers a known temperature, and the edited ONNX graphs compute what the fit says."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import DataError, UsageError
from tests.uncertainty.support import run, session


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _overconfident(n=4000, classes=5, factor=3.0, seed=0):
    """Labels drawn from softmax(z); probabilities softmax(factor * z): the right temperature is ``factor``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    y = np.array([rng.choice(classes, p=p) for p in _softmax(z)])
    return y, _softmax(factor * z)


def test_fit_recovers_a_known_temperature_and_lowers_nll():
    from deploykit.uncertainty.temperature import Placement, fit_temperature

    y, probs = _overconfident()
    fit = fit_temperature(y, probs)
    assert fit.placement is Placement.LOGITS
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.nll_after < fit.nll_before - 0.1


def test_scaling_keeps_the_predicted_class():
    from deploykit.uncertainty.temperature import scale_probs

    _, probs = _overconfident(n=200)
    for t in (0.3, 2.5):
        assert np.array_equal(scale_probs(probs, t).argmax(axis=1), probs.argmax(axis=1))


def test_mc_fit_picks_the_placement_with_lower_nll():
    from deploykit.uncertainty.temperature import fit_mc_temperature

    y, probs = _overconfident(n=1000)
    rng = np.random.default_rng(1)
    samples = np.stack([_softmax(np.log(probs) + rng.normal(0, 0.3, probs.shape)) for _ in range(8)])
    fit = fit_mc_temperature(y, samples)
    assert set(fit.alternatives) == {"per_sample", "mean"}
    assert fit.nll_after == pytest.approx(min(fit.alternatives.values()))
    assert fit.nll_after < fit.nll_before


def test_bad_inputs_are_one_clear_error():
    from deploykit.uncertainty.temperature import fit_mc_temperature, fit_temperature

    with pytest.raises(DataError, match="sum to 1"):
        fit_temperature([0, 1], [[2.0, 3.0], [1.0, 0.5]])
    with pytest.raises(DataError, match=r"\[T, N, C\]"):
        fit_mc_temperature([0, 1], np.full((2, 2), 0.5))


@pytest.mark.parametrize("quantization", [None, "int8-dynamic", "int8-static"])
def test_deterministic_graph_gets_div_before_softmax(tmp_path, mc_plain_model, digits, quantization):
    import onnx

    from deploykit.export import export_onnx
    from deploykit.uncertainty.temperature import (
        Placement,
        TemperatureFit,
        read_temperature,
        scale_probs,
        write_with_temperature,
    )

    src = tmp_path / "m.onnx"
    export_onnx(mc_plain_model, src, quantization=quantization, calibration_data=digits if quantization else None)
    fit = TemperatureFit(2.0, Placement.LOGITS, 0.5, 0.4, 100)
    dst = write_with_temperature(src, tmp_path / "t.onnx", fit)
    proto = onnx.load(str(dst))
    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    assert any(n.op_type == "Div" and softmax.input[0] in n.output for n in proto.graph.node)
    assert read_temperature(proto)["temperature"] == 2.0
    x = digits.x_test[:64]
    before = session(src).run(None, {"input": x})[0]
    after = session(dst).run(None, {"input": x})[0]
    if quantization == "int8-static":  # a QDQ pair after the softmax rounds the probabilities to a 1/255 grid
        assert after.max(1).mean() < before.max(1).mean() - 0.05  # T = 2 flattens every row
        np.testing.assert_allclose(after.sum(1), 1, atol=0.03)
    else:
        np.testing.assert_allclose(after, scale_probs(before, 2.0), atol=2e-6)
    with pytest.raises(UsageError, match="already holds a temperature"):
        write_with_temperature(dst, tmp_path / "again.onnx", fit)


def test_graph_without_softmax_is_wrapped_in_log_div_softmax():
    from onnx import TensorProto, helper

    from deploykit.uncertainty.temperature import Placement, TemperatureFit, apply_temperature, scale_probs

    node = helper.make_node("Identity", ["input"], ["probabilities"])
    graph = helper.make_graph(
        [node],
        "p",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    apply_temperature(proto, TemperatureFit(0.5, Placement.LOGITS, 1.0, 0.9, 10))
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], np.float32)
    out = session(proto).run(None, {"input": p})[0]
    np.testing.assert_allclose(out, scale_probs(p, 0.5), atol=1e-6)


@pytest.fixture(scope="module")
def seeded_mc_path(tmp_path_factory, mc_bn_model):
    """A seeded MC model with raw samples: call k of every new session draws the same masks."""
    from deploykit.uncertainty import export_mc_onnx

    path = tmp_path_factory.mktemp("mc_t") / "seeded.onnx"
    export_mc_onnx(mc_bn_model, path, samples=16, seed=5, include_samples=True)
    return path


@pytest.mark.parametrize("placement", ["per_sample", "mean"])
def test_mc_graph_scaled_per_sample_or_on_the_mean(tmp_path, seeded_mc_path, digits, placement):
    from deploykit.uncertainty.measures import entropy
    from deploykit.uncertainty.temperature import Placement, TemperatureFit, scale_mc, write_with_temperature

    fit = TemperatureFit(1.7, Placement(placement), 0.5, 0.4, 100)
    dst = write_with_temperature(seeded_mc_path, tmp_path / "t.onnx", fit)
    x = digits.x_test[:32]
    raw = run(session(seeded_mc_path), x)  # first call of a fresh session: the same masks as below
    out = run(session(dst), x)
    np.testing.assert_allclose(out["mean"], scale_mc(raw["sample_probabilities"], fit), atol=2e-6)
    np.testing.assert_allclose(out["predictive_entropy"], entropy(out["mean"]), atol=1e-5)
    assert np.array_equal(out["predicted_class"], out["mean"].argmax(1))
    if placement == "mean":  # the spread between samples is left as it was
        np.testing.assert_allclose(out["mutual_information"], raw["mutual_information"], atol=1e-6)
        np.testing.assert_allclose(out["std"], raw["std"], atol=1e-6)


def test_report_shows_before_and_after_with_a_reliability_diagram(tmp_path):
    from deploykit.uncertainty.temperature import fit_temperature, scale_probs, temperature_report

    y, probs = _overconfident(n=1500, seed=3)
    fit = fit_temperature(y[:1000], probs[:1000])
    report = temperature_report(
        y[1000:], probs[1000:], scale_probs(probs[1000:], fit.temperature), fit, plot_path=tmp_path / "reliability.png"
    )
    assert report.after.nll < report.before.nll and report.after.ece < report.before.ece
    assert report.after.accuracy == report.before.accuracy
    assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert report.to_dict()["fit"]["placement"] == "logits"


def test_per_sample_placement_needs_exactly_one_softmax_per_sample():
    """Two Softmax nodes and no ensemble members: a per-sample temperature would have no one place to go."""
    from onnx import TensorProto, helper

    from deploykit.uncertainty.temperature import per_sample_placement

    def graph(softmaxes: int):
        nodes = [helper.make_node("Softmax", ["x"], [f"s{k}"], axis=-1) for k in range(softmaxes)]
        outputs = [helper.make_tensor_value_info(f"s{k}", TensorProto.FLOAT, [1, 3]) for k in range(softmaxes)]
        return helper.make_model(
            helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])], outputs),
            opset_imports=[helper.make_opsetid("", 17)],
        )

    assert per_sample_placement(graph(1)) and not per_sample_placement(graph(2)) and not per_sample_placement(graph(0))
