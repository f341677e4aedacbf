"""The one ONNX graph builder: names that never clash, reductions in each opset's form, the shared formulas."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploykit.errors import UsageError
from deploykit.onnx.builder import MAX_OPSET, MIN_OPSET, GraphBuilder
from deploykit.onnx.graph_ops import retarget


def _run(model, feeds: dict) -> list:
    import onnxruntime as ort

    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _info(name: str, dims: list, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def _existing(opset: int = 17):
    """A model holding names the builder would give (``edit/raw_1``, ``edit/const_2``): a second edit sees them."""
    nodes = [
        helper.make_node("Add", ["x", "edit/const_2"], ["edit/raw_1"], name="edit/raw_1_node"),
        helper.make_node("Relu", ["edit/raw_1"], ["y"], name="y_node"),
    ]
    one = onnx.numpy_helper.from_array(np.ones(3, np.float32), "edit/const_2")
    graph = helper.make_graph(nodes, "g", [_info("x", ["N", 3])], [_info("y", ["N", 3])], initializer=[one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_an_edit_never_reuses_a_name_the_graph_holds():
    """Tensor and node names: fresh ones skip the graph's own, and a node named after an output it cannot take."""
    proto = _existing()
    ed = GraphBuilder.editing(proto, "edit")
    raw = ed.name("raw")
    retarget(proto.graph, "y", raw)  # as the temperature edit does: the old output is recomputed under its name
    z = ed.op("Add", [raw, ed.const(np.full(3, 2.0))])
    ed.op("Neg", [ed.op("Relu", [z])], output="y")  # its node cannot be "y_node": the graph holds that name
    names = [n.name for n in proto.graph.node]
    tensors = [t.name for t in proto.graph.initializer] + [o for n in proto.graph.node for o in n.output]
    assert len(set(names)) == len(names), names
    assert len(set(tensors)) == len(tensors), tensors
    assert all(t.startswith("edit/") for t in tensors if t != "y")
    x = np.array([[-3.0, 0.0, 4.0]], np.float32)
    (y,) = _run(proto, {"x": x})
    np.testing.assert_array_equal(y, -np.maximum(np.maximum(x + 1, 0) + 2, 0))


@pytest.mark.parametrize("opset", [MIN_OPSET, 17, MAX_OPSET])
@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceSum", "ReduceMax"])
def test_a_reduction_takes_the_form_its_opset_requires_and_computes_the_same(opset, op_type):
    """``axes`` is an input from opset 18 (ReduceSum: from 13), an attribute before; the values are numpy's."""
    g = GraphBuilder(opset)
    g.op("Identity", [g.reduce(op_type, "x", [1, 2], keepdims=1)], output="y")
    model = g.model("reduce", [_info("x", ["N", 2, 3, 4])], [_info("y", ["N", 1, 1, 4])])
    node = next(n for n in model.graph.node if n.op_type == op_type)
    as_input = op_type == "ReduceSum" or opset >= 18
    assert (len(node.input) == 2) == as_input
    assert any(a.name == "axes" for a in node.attribute) != as_input
    x = np.random.default_rng(0).normal(size=(5, 2, 3, 4)).astype(np.float32)
    expected = {"ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max}[op_type](x, (1, 2), keepdims=True)
    np.testing.assert_allclose(_run(model, {"x": x})[0], expected, rtol=1e-6, atol=1e-6)


def test_entropy_and_log_probs_count_zero_probabilities_as_zero():
    """The one entropy every graph uses (MC, ensemble, abstain): -sum p log p with 0 log 0 = 0, natural log."""
    g = GraphBuilder(17)
    g.op("Identity", [g.entropy("p", 1)], output="h")
    g.op("Identity", [g.log_probs("p")], output="logp")
    model = g.model("entropy", [_info("p", ["N", 3])], [_info("h", ["N"]), _info("logp", ["N", 3])])
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], np.float32)
    h, logp = _run(model, {"p": p})
    with np.errstate(divide="ignore"):
        expected = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
        np.testing.assert_allclose(logp[p > 0], np.log(p[p > 0]), rtol=1e-6)
    assert np.all(np.isfinite(logp)) and np.all(logp[p == 0] < -80)
    np.testing.assert_allclose(h, expected, rtol=1e-6, atol=1e-7)
    floors = [t for t in model.graph.initializer if onnx.numpy_helper.to_array(t).dtype == np.float32]
    assert len(floors) == 1, "the log floor is one shared constant, not one per use"


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1])
def test_an_edit_refuses_an_opset_outside_the_supported_range(opset):
    with pytest.raises(UsageError, match=f"opset {opset} .*{MIN_OPSET}..{MAX_OPSET}"):
        GraphBuilder.editing(_existing(opset), "edit")


def test_an_unknown_output_is_named_with_the_outputs_the_model_has():
    with pytest.raises(UsageError, match=r"no output 'mean' \(outputs: y\)"):
        GraphBuilder.editing(_existing(), "edit").output_info("mean")


def test_a_node_with_several_outputs_gets_fresh_names_for_each():
    g = GraphBuilder(17)
    out, mask = g.op("Dropout", ["x", g.const(0.5), g.true()], n_out=2)
    assert out != mask and g.true() == g.true()
    with pytest.raises(ValueError, match="2 outputs"):
        g.op("Dropout", ["x"], output="y", n_out=2)
