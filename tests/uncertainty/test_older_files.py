"""Older files and newer outputs: a row added to deploykit.core.contract.OUTPUTS makes no reader refuse a file
without it, and a file that has it is read without a change to the predictor or the server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.core import contract
from deploykit.core.contract import KIND_MC_DROPOUT, OUTPUT_NAMES, TASK_KEY, OutputSpec
from deploykit.serve import ServeConfig
from deploykit.uncertainty import UncertaintyPredictor

#: A served output deploykit does not have (yet): one optional row of the table.
NOVELTY = OutputSpec(
    "novelty",
    "float32",
    ("N",),
    contract.UNCERTAIN,
    "classification",
    "a newer output: how unlike the training rows the input is",
    when="a newer option",
)


@pytest.fixture(scope="module")
def older_file(tmp_path_factory, mc_bn_model):
    """An MC model as an older deploykit wrote it: the required outputs only, no ``deploykit.task`` entry."""
    import onnx

    from deploykit.uncertainty import export_mc_onnx

    path = tmp_path_factory.mktemp("older") / "older_mc.onnx"
    export_mc_onnx(mc_bn_model, path, samples=5, seed=1)
    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != TASK_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    assert {o.name for o in proto.graph.output} == set(OUTPUT_NAMES)
    return path


@pytest.fixture
def newer_table(monkeypatch):
    """The contract with one more optional output, as a later deploykit might have it."""
    monkeypatch.setattr(contract, "OUTPUTS", (*contract.OUTPUTS, NOVELTY))


def _with_novelty(src, dst):
    """``src`` plus the newer output (declared from the table, as the graph builders do)."""
    import onnx

    from deploykit.export.contract_onnx import output_info

    proto = onnx.load(str(src))
    proto.graph.node.append(onnx.helper.make_node("Identity", ["predictive_entropy"], ["novelty"]))
    proto.graph.output.append(output_info("novelty", "classification", KIND_MC_DROPOUT))
    onnx.save(proto, str(dst))
    return dst


def test_an_older_file_is_predicted_and_served_under_a_newer_table(older_file, digits, newer_table):
    from deploykit.serve.models import open_model

    result = UncertaintyPredictor(older_file).predict(digits.x_test[:7], samples=5)
    assert set(result.outputs) == set(OUTPUT_NAMES)
    assert result.sample_probabilities is None and result.abstain is None and result.prediction_set is None
    assert result.mean.shape == (7, 10) and result.predicted_class.dtype == np.int64
    with pytest.raises(AttributeError, match="novelty"):
        result.novelty  # noqa: B018  (the file has no such output)

    model = open_model("older", older_file, ServeConfig())
    types = {t["name"]: t for t in model.get_output_types()}
    assert list(types) == list(OUTPUT_NAMES)
    assert types["predicted_class"]["datatype"] == "INT64"
    assert types["mean"]["parameters"]["description"] == contract.description("mean", "classification")
    assert model.metadata_parameters()["task"] == "classification"  # read off the outputs: no deploykit.core.task
    values = model._outputs(digits.x_test[:3].astype(np.float32), 5)
    assert set(values) == set(OUTPUT_NAMES) and values["mean"].shape == (3, 10)


def test_a_newer_output_is_read_with_no_change_to_the_readers(older_file, digits, tmp_path, newer_table):
    """One row in the table and the graph that makes it: the predictor returns it, the server describes it."""
    from deploykit.serve.models import open_model

    path = _with_novelty(older_file, tmp_path / "newer_mc.onnx")
    result = UncertaintyPredictor(path).predict(digits.x_test[:4], samples=5)
    np.testing.assert_array_equal(result.novelty, result.predictive_entropy)
    assert result.outputs["novelty"].shape == (4,)
    types = {t["name"]: t for t in open_model("newer", path, ServeConfig()).get_output_types()}
    assert types["novelty"]["parameters"]["description"] == NOVELTY.description


def test_an_output_of_another_dtype_is_refused_naming_it(older_file, tmp_path):
    """A file whose predicted_class is float: one error naming the output, at load, before any value is read."""
    import onnx

    from deploykit.errors import OutputContractError
    from deploykit.serve.models import open_model

    proto = onnx.load(str(older_file))
    out = next(o for o in proto.graph.output if o.name == "predicted_class")
    node = next(n for n in proto.graph.node if "predicted_class" in n.output)
    node.output[0] = "predicted_class_int"
    proto.graph.node.append(onnx.helper.make_node("Cast", ["predicted_class_int"], ["predicted_class"], to=1))
    out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    path = tmp_path / "float_class.onnx"
    onnx.save(proto, str(path))
    match = "output 'predicted_class' is float32, the contract says int64"
    with pytest.raises(OutputContractError, match=match):
        UncertaintyPredictor(path)
    with pytest.raises(OutputContractError, match=match):
        open_model("bad", path, ServeConfig())


@pytest.mark.slow  # starts a server process
def test_an_older_file_over_http(older_file, digits, tmp_path):
    """The real server, a real HTTP client: the older file's metadata and an inference."""
    from tests.serve.support import get, post_json, serving

    with serving(older_file, tmp_path / "serve.log") as server:
        status, body = get(f"{server.base}/v2/models/older_mc")
        assert status == 200
        meta = json.loads(body)
        assert [o["name"] for o in meta["outputs"]] == list(OUTPUT_NAMES)
        assert all(o["parameters"]["description"] for o in meta["outputs"])
        x = digits.x_test[:2].astype(np.float32)
        payload = {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
        }
        status, answer = post_json(f"{server.base}/v2/models/older_mc/infer", payload)
        assert status == 200, answer
        assert {o["name"] for o in answer["outputs"]} == set(OUTPUT_NAMES)
