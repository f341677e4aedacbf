"""A model with two inputs and two outputs (the book's Wide & Deep with its auxiliary head) served by name.

Exported by the real exporter from a tf_keras model built as the book builds it; one ``deploykit serve``
process answers tritonclient (one v2 tensor per input and per output, by name) and a v1 request whose
instances are objects keyed by input name; every answer equals onnxruntime's on the same file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.serve.support import get, post_json, serving, triton_client

pytestmark = pytest.mark.slow  # trains a small model and starts a server process


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from deploykit.export import export_onnx
    from tests.multi_models import wide_and_deep

    folder = tmp_path_factory.mktemp("multi_served")
    export_onnx(wide_and_deep(aux=True, tf_keras=True, epochs=1), folder / "wide_deep.onnx")
    return folder


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    with serving(repo, tmp_path_factory.mktemp("log") / "server.log") as process:
        yield process


@pytest.fixture(scope="module")
def inputs():
    from tests.multi_models import diabetes_arrays

    wide, deep, _ = diabetes_arrays()
    return {"input_wide": wide[:25], "input_deep": deep[:25]}


def _local(repo, inputs) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(repo / "wide_deep.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def test_the_start_line_names_every_input_with_its_shape(server):
    """It said ``input [5]`` (the first input alone) for a model of two."""
    start = next(line for line in server.log.read_text().splitlines() if line.startswith("model 'wide_deep'"))
    assert "inputs input_deep [6], input_wide [5]," in start, start


def test_metadata_lists_every_input_and_output_by_name(server):
    status, body = get(server.base + "/v2/models/wide_deep")
    assert status == 200
    meta = json.loads(body)
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("input_deep", [-1, 6]), ("input_wide", [-1, 5])]
    assert len(meta["outputs"]) == 2 and all(t["shape"] == [-1, 1] for t in meta["outputs"])
    assert meta["parameters"]["task"] == "regression"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_sends_one_tensor_per_input_and_reads_one_per_output(server, repo, inputs, binary):
    import tritonclient.http as httpclient

    tensors = []
    for name in ("input_wide", "input_deep"):  # not the artifact's order: inputs are matched by name
        tensor = httpclient.InferInput(name, list(inputs[name].shape), "FP32")
        tensor.set_data_from_numpy(inputs[name], binary_data=binary)
        tensors.append(tensor)
    with triton_client(server.url) as client:
        result = client.infer("wide_deep", tensors)
    expected = _local(repo, inputs)
    for name, value in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), value, rtol=0, atol=1e-6)


def test_v1_instances_are_objects_keyed_by_input_name(server, repo, inputs):
    rows = [{name: inputs[name][i].tolist() for name in inputs} for i in range(5)]
    status, body = post_json(server.base + "/v1/models/wide_deep:predict", {"instances": rows})
    assert status == 200, body
    expected = _local(repo, {k: v[:5] for k, v in inputs.items()})
    for i, prediction in enumerate(body["predictions"]):
        for name, value in expected.items():
            np.testing.assert_allclose(prediction[name], value[i], rtol=1e-6, atol=1e-6)


def test_a_missing_input_is_refused_naming_the_inputs(server, inputs):
    payload = {
        "inputs": [
            {"name": "input_wide", "shape": [1, 5], "datatype": "FP32", "data": inputs["input_wide"][0].tolist()}
        ]
    }
    status, body = post_json(server.base + "/v2/models/wide_deep/infer", payload)
    assert status == 400
    assert "input_deep" in body["error"] and "input_wide" in body["error"]
    status, body = post_json(
        server.base + "/v1/models/wide_deep:predict", {"instances": [{"input_wide": inputs["input_wide"][0].tolist()}]}
    )
    assert status == 400 and "input_deep" in body["error"]


def test_the_example_client_sends_every_input_and_prints_every_head(server, repo, inputs, tmp_path):
    """examples/client_tritonclient.py on Wide & Deep: one tensor per input from arrays named after them (--npz),
    each named head printed with the value onnxruntime gives."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "client_tritonclient.py"
    np.savez(tmp_path / "wd.npz", **inputs)
    command = [sys.executable, str(example), "--url", server.url, "--model", "wide_deep"]
    done = subprocess.run(
        [*command, "--npz", str(tmp_path / "wd.npz"), "--index", "3"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    expected = _local(repo, {k: v[3:4] for k, v in inputs.items()})
    for name, value in expected.items():
        assert f"{name}: predicted {value[0, 0]:.4g} (the targets' units)" in done.stdout, done.stdout
    assert "class" not in done.stdout and "probability" not in done.stdout
    synthetic = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert synthetic.returncode == 0 and "synthetic input" in synthetic.stdout, synthetic.stderr
