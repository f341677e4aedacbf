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

pytestmark = pytest.mark.slow  # every test drives the server fixture (a server process)

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


def tensors(meta: dict) -> list[dict]:
    """Metadata tensors without their (optional) parameters."""
    return [{k: v for k, v in t.items() if k != "parameters"} for t in meta]


def test_model_metadata(client, digits):
    det = client.get_model_metadata("digits")
    assert det["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert tensors(det["outputs"]) == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert det["platform"] == "onnxruntime_onnx" and det["versions"] == ["1"]
    assert det["parameters"] == {
        "kind": "deterministic",
        "task": "classification",
        "output": "probabilities",  # what the model's own output holds (a binary head: sigmoid, binary_logits)
        "class_labels": [str(c) for c in digits.class_names],
    }
    mc = client.get_model_metadata("digits_mc")
    assert mc["inputs"] == det["inputs"]  # `samples` is a request parameter, not a tensor
    shapes = {o["name"]: (o["datatype"], o["shape"]) for o in mc["outputs"]}
    assert shapes == {
        "mean": ("FP32", [-1, 10]),
        "std": ("FP32", [-1, 10]),
        "predictive_entropy": ("FP32", [-1]),
        "mutual_information": ("FP32", [-1]),
        "predicted_class": ("INT64", [-1]),
    }
    assert mc["parameters"] == {
        "kind": "mc_dropout",
        "task": "classification",
        "output": "probabilities",
        "class_labels": det["parameters"]["class_labels"],
        "default_samples": 30,
        "max_samples": 1000,
    }
    triton = {o["name"] for o in client.get_model_metadata("mc_triton")["outputs"]}
    assert triton == {*MC_OUTPUTS, "sample_probabilities"}


def test_metadata_glossary(client):
    """Every output says what it is: std's kind, entropies in nats, predicted_class = argmax of mean."""
    mc = {o["name"]: o["parameters"]["description"] for o in client.get_model_metadata("mc_triton")["outputs"]}
    assert "standard deviation" in mc["std"] and "population" in mc["std"]
    assert "nats" in mc["predictive_entropy"] and "nats" in mc["mutual_information"]
    assert "argmax of mean" in mc["predicted_class"]
    assert "[T, N, classes]" in mc["sample_probabilities"]
    det = client.get_model_metadata("digits")["outputs"][0]["parameters"]["description"]
    assert "probabilities" in det


def test_model_config_and_repository_index(client):
    config = client.get_model_config("digits")
    assert config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 1024
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
    mc = {o["name"]: o for o in client.get_model_config("digits_mc")["output"]}
    assert mc["predictive_entropy"] == {
        "name": "predictive_entropy",
        "data_type": "TYPE_FP32",
        "dims": [1],
        "reshape": {"shape": []},
    }  # a scalar per row, as Triton writes it
    raw = client.get_model_config("mc_triton")  # sample_probabilities is [T, N, classes]: not batch-first
    assert raw["max_batch_size"] == 0 and {"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 64]} in raw["input"]
    index = client.get_model_repository_index()
    assert sorted((m["name"], m["version"], m["state"]) for m in index) == [
        ("digits", "1", "READY"),
        ("digits_mc", "1", "READY"),
        ("mc_triton", "1", "READY"),
    ]
    import tritonclient.utils

    with pytest.raises(tritonclient.utils.InferenceServerException, match="does not exist"):
        client.get_model_config("nope")


def test_versioned_routes(client, x):
    import tritonclient.utils

    assert client.is_model_ready("digits", "1") and not client.is_model_ready("digits", "2")
    assert client.get_model_metadata("digits", "1")["name"] == "digits"
    assert client.get_model_config("digits", "1")["name"] == "digits"
    result = client.infer("digits", [infer_input(x, True)], model_version="1")
    assert result.as_numpy("probabilities").shape == (len(x), 10)
    with pytest.raises(tritonclient.utils.InferenceServerException, match="version '2'"):
        client.infer("digits", [infer_input(x, True)], model_version="2")


def test_classification_extension(client, x):
    """tritonclient's class_count: the top classes of each row as "score:index:label", largest first (Triton's)."""
    import tritonclient.http as httpclient

    for binary in (True, False):
        output = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
        result = client.infer("digits", [infer_input(x, binary)], outputs=[output])
        plain = client.infer("digits", [infer_input(x, binary)]).as_numpy("probabilities")
        top = result.as_numpy("probabilities")
        assert top.shape == (len(x), 3)
        for row, probabilities in zip(top, plain, strict=True):
            parsed = [(item.decode() if binary else item).split(":") for item in row]  # JSON: str, as Triton
            assert [int(p[1]) for p in parsed] == list(np.argsort(-probabilities, kind="stable")[:3])
            assert [p[2] for p in parsed] == [p[1] for p in parsed]  # digits' labels are "0".."9"
            np.testing.assert_allclose([float(p[0]) for p in parsed], np.sort(probabilities)[::-1][:3], atol=1e-6)
    mc = client.infer("mc_triton", [infer_input(x, True)], outputs=requested(["mean"], True))
    assert mc.as_numpy("mean").shape == (len(x), 10)


def test_samples_on_a_deterministic_model_is_ignored_with_a_note(client, server, x):
    """One client can call both kinds: `samples` is ignored by a deterministic model, and the response says so."""
    result = client.infer("digits", [infer_input(x, True)], parameters={"samples": 50})
    assert result.as_numpy("probabilities").shape == (len(x), 10)
    note = result.get_response()["parameters"]
    assert note["ignored_parameters"] == ["samples"] and "deterministic" in note["note"]
    status, body = post_json(
        f"{server.base}/v1/models/digits:predict", {"instances": x[:1].tolist(), "parameters": {"samples": 5}}
    )
    assert status == 200 and body["parameters"]["ignored_parameters"] == ["samples"]
    assert "parameters" not in client.infer("digits", [infer_input(x, True)]).get_response()


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
        ("binary", None),
        ("json", 50),
        ("v1", 10),
    ]
    for how, samples in calls:
        expected = predictor.predict(x, samples=samples)
        if how == "v1":
            status, body = post_json(
                f"{server.base}/v1/models/digits_mc:predict",
                {"instances": x.tolist(), "parameters": {"samples": samples}},
            )
            assert status == 200, body
            got = {n: np.array([p[n] for p in body["predictions"]]) for n in MC_OUTPUTS}
        else:
            binary = how == "binary"
            result = client.infer(
                "digits_mc",
                [infer_input(x, binary)],
                outputs=requested(MC_OUTPUTS, binary),
                parameters={"samples": samples} if samples else None,
            )
            assert result.get_response()["parameters"] == {"samples": samples or 30}
            got = {n: result.as_numpy(n) for n in MC_OUTPUTS}
        for name in MC_OUTPUTS:
            np.testing.assert_allclose(
                got[name], getattr(expected, name), rtol=1e-5, atol=1e-6, err_msg=f"{how}: {name}"
            )


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
    result = client.infer("mc_triton", [infer_input(x, False)], outputs=requested(["predictive_entropy"], False))
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
    status, body = post_json(
        f"{server.base}/v1/models/mc_triton:predict", {"instances": x[:2].tolist(), "parameters": {"samples": 5}}
    )
    assert status == 200, body
    first = body["predictions"][0]
    assert set(first) == {*MC_OUTPUTS, "sample_probabilities"}
    assert len(first["mean"]) == 10 and isinstance(first["predicted_class"], int)
    assert np.array(first["sample_probabilities"]).shape == (5, 10)
    assert json.dumps(body)  # plain JSON values


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_clients(server, digits, tmp_path):
    """The examples read the input from the model's metadata; --npz / a values file send a real sample."""
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_test=digits.x_test, y_test=digits.y_test)
    client = [sys.executable, str(EXAMPLES / "client_tritonclient.py"), "--url", server.url]
    done = subprocess.run(
        [*client, "--model", "mc_triton", "--samples", "20", "--index", "5", "--npz", str(npz)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"true class {digits.y_test[5]}" in done.stdout and "predictive entropy" in done.stdout
    assert "20 samples" in done.stdout
    done = subprocess.run([*client, "--model", "digits"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "synthetic input" in done.stdout and "predicted class" in done.stdout, done.stderr
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: examples/client_curl.sh not run")
    values = tmp_path / "row.txt"
    values.write_text(",".join(str(v) for v in digits.x_test[5].ravel()))
    done = subprocess.run(
        ["sh", str(EXAMPLES / "client_curl.sh"), server.url, "mc_triton", str(values)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert answers[0] == {"ready": True} and answers[1]["name"] == "mc_triton"
    assert answers[2]["parameters"] == {"samples": 50}
    assert set(answers[3]["predictions"][0]) >= {"mean", "predictive_entropy", "predicted_class"}
    done = subprocess.run(
        ["sh", str(EXAMPLES / "client_curl.sh"), server.url, "digits"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[2])["parameters"]["ignored_parameters"] == ["samples"]
    done = subprocess.run(
        ["sh", str(EXAMPLES / "client_curl.sh"), server.url, "nope"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "model 'nope' does not exist" in done.stdout + done.stderr
