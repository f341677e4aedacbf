"""The Open Inference Protocol through the real Triton client (tritonclient.http), and v1 :predict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.serve.support import get, post_json

MC_OUTPUTS = ["mean", "std", "predictive_entropy", "mutual_information", "predicted_class"]


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.url) as c:
        yield c


@pytest.fixture(scope="module")
def x(digits):
    return digits.x_test[:7].astype(np.float32)


def infer_input(x, binary: bool):
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def requested(names, binary: bool):
    import tritonclient.http as httpclient

    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]


def test_health_and_readiness(client, server):
    assert client.is_server_live() and client.is_server_ready()
    for name in ("digits", "digits_mc", "mc_triton"):
        assert client.is_model_ready(name)
    assert not client.is_model_ready("nope")
    assert get(server.base + "/metrics")[0] == 200  # kserve's Prometheus metrics


def test_model_metadata(client):
    det = client.get_model_metadata("digits")
    assert det["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert det["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    mc = client.get_model_metadata("digits_mc")
    assert mc["inputs"] == det["inputs"]  # `samples` is a request parameter, not a tensor
    shapes = {o["name"]: (o["datatype"], o["shape"]) for o in mc["outputs"]}
    assert shapes == {"mean": ("FP32", [-1, 10]), "std": ("FP32", [-1, 10]), "predictive_entropy": ("FP32", [-1]),
                      "mutual_information": ("FP32", [-1]), "predicted_class": ("INT64", [-1])}
    triton = {o["name"] for o in client.get_model_metadata("mc_triton")["outputs"]}
    assert triton == {*MC_OUTPUTS, "sample_probabilities"}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_deterministic_matches_onnxruntime(client, model_repo, x, binary):
    import onnxruntime as ort

    expected = ort.InferenceSession(str(model_repo / "digits.onnx")).run(None, {"input": x})[0]
    result = client.infer("digits", [infer_input(x, binary)], outputs=requested(["probabilities"], binary))
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
    assert result.get_response()["model_name"] == "digits"


def test_mc_matches_uncertainty_predictor_with_the_same_seed(client, server, model_repo, x):
    """Seeded MC models repeat their sequence of draws per session: call k of the server's session equals
    call k of a fresh UncertaintyPredictor (``digits_mc`` is called by this test only)."""
    from deploykit import UncertaintyPredictor

    predictor = UncertaintyPredictor(model_repo / "digits_mc.onnx")
    calls = [  # (how, samples): the server's default T (30), then T per request
        ("binary", None), ("json", 50), ("v1", 10),
    ]
    for how, samples in calls:
        expected = predictor.predict(x, samples=samples)
        if how == "v1":
            status, body = post_json(f"{server.base}/v1/models/digits_mc:predict",
                                     {"instances": x.tolist(), "parameters": {"samples": samples}})
            assert status == 200, body
            got = {n: np.array([p[n] for p in body["predictions"]]) for n in MC_OUTPUTS}
        else:
            binary = how == "binary"
            result = client.infer("digits_mc", [infer_input(x, binary)], outputs=requested(MC_OUTPUTS, binary),
                                  parameters={"samples": samples} if samples else None)
            assert result.get_response()["parameters"] == {"samples": samples or 30}
            got = {n: result.as_numpy(n) for n in MC_OUTPUTS}
        for name in MC_OUTPUTS:
            np.testing.assert_allclose(got[name], getattr(expected, name), rtol=1e-5, atol=1e-6, err_msg=f"{how}: {name}")


def test_mc_outputs_vary_with_samples_and_default_to_all(client, x):
    """No outputs requested: every output comes back (binary by default); T = 1 gives std 0."""
    result = client.infer("mc_triton", [infer_input(x, True)], parameters={"samples": 1})
    response = result.get_response()
    assert {o["name"] for o in response["outputs"]} == {*MC_OUTPUTS, "sample_probabilities"}
    assert result.as_numpy("sample_probabilities").shape == (1, len(x), 10)
    np.testing.assert_array_equal(result.as_numpy("std"), 0.0)
    many = client.infer("mc_triton", [infer_input(x, True)], parameters={"samples": 200})
    assert many.as_numpy("sample_probabilities").shape == (200, len(x), 10)
    np.testing.assert_allclose(many.as_numpy("mean").sum(axis=1), 1.0, atol=1e-5)
    assert (many.as_numpy("std") > 0).any()
    np.testing.assert_array_equal(many.as_numpy("predicted_class"), many.as_numpy("mean").argmax(axis=1))


def test_one_requested_output_only(client, x):
    result = client.infer("mc_triton", [infer_input(x, False)],
                          outputs=requested(["predictive_entropy"], False))
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["predictive_entropy"]
    entropy = result.as_numpy("predictive_entropy")
    assert entropy.shape == (len(x),) and np.all((entropy >= 0) & (entropy <= np.log(10) + 1e-5))


def test_v1_predict(server, model_repo, x):
    import onnxruntime as ort

    status, body = post_json(f"{server.base}/v1/models/digits:predict", {"instances": x[:3].tolist()})
    assert status == 200, body
    expected = ort.InferenceSession(str(model_repo / "digits.onnx")).run(None, {"input": x[:3]})[0]
    np.testing.assert_allclose(np.array(body["predictions"]), expected, rtol=1e-6, atol=1e-7)
    status, body = post_json(f"{server.base}/v1/models/mc_triton:predict",
                             {"instances": x[:2].tolist(), "parameters": {"samples": 5}})
    assert status == 200, body
    first = body["predictions"][0]
    assert set(first) == {*MC_OUTPUTS, "sample_probabilities"}
    assert len(first["mean"]) == 10 and isinstance(first["predicted_class"], int)
    assert np.array(first["sample_probabilities"]).shape == (5, 10)
    assert json.dumps(body)  # plain JSON values


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_clients(server):
    done = subprocess.run([sys.executable, str(EXAMPLES / "client_tritonclient.py"), "--url", server.url,
                           "--model", "mc_triton", "--samples", "20", "--index", "5"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "true class" in done.stdout and "predictive entropy" in done.stdout and "20 samples" in done.stdout
    done = subprocess.run([sys.executable, str(EXAMPLES / "client_tritonclient.py"), "--url", server.url, "--model", "digits"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "predicted class" in done.stdout, done.stderr
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: examples/client_curl.sh not run")
    done = subprocess.run(["sh", str(EXAMPLES / "client_curl.sh"), server.url, "mc_triton"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert answers[0] == {"ready": True} and answers[2]["parameters"] == {"samples": 50}
    assert set(answers[3]["predictions"][0]) >= {"mean", "predictive_entropy", "predicted_class"}
