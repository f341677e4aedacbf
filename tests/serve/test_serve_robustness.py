"""Bad requests get a 4xx with a one-line message (never a 5xx, never a traceback); the server keeps serving."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.support import get, request

pytestmark = pytest.mark.slow  # every test drives the server fixture (a server process)

ROW = [1.0] * 64


def v2(shape=(1, 64), data=None, datatype="FP32", name="input", **extra):
    tensor = {
        "name": name,
        "shape": list(shape),
        "datatype": datatype,
        "data": data if data is not None else [1.0] * int(np.prod(shape)),
    }
    return {"inputs": [tensor], **extra}


def binary_body(x: np.ndarray, shape=None, **extra) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape or list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            **extra,
        }
    ).encode()
    return header + x.tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def truncated(request: tuple[bytes, dict]) -> tuple[bytes, dict]:
    """A binary request missing the last two floats."""
    body, headers = request
    return body[:-8], headers


def assert_refused(status: int, body: bytes, code: int, *words: str) -> str:
    """A JSON ``{"error": message}`` with status ``code``; the message names the problem."""
    assert status == code, (status, body)
    message = json.loads(body)["error"]
    assert "Traceback" not in message and "\n" not in message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def infer(server, model: str, payload, headers=None) -> tuple[int, bytes]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(
        f"{server.base}/v2/models/{model}/infer", body, {"Content-Type": "application/json", **(headers or {})}
    )


def predict(server, model: str, payload) -> tuple[int, bytes]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(f"{server.base}/v1/models/{model}:predict", body, {"Content-Type": "application/json"})


CASES = {
    "malformed JSON": (lambda s: infer(s, "digits", b'{"inputs": [{"name": '), 400, ["malformed JSON"]),
    "malformed JSON, form content type": (
        lambda s: request(f"{s.base}/v2/models/digits/infer", b'{"inputs": ['),
        400,
        ["malformed JSON"],
    ),
    "malformed JSON v1": (
        lambda s: predict(s, "digits", b'{"instances": [[1, 2'),
        400,
        ["unrecognized request format"],
    ),
    "wrong datatype": (lambda s: infer(s, "digits", v2(datatype="INT64", data=[1] * 64)), 400, ["FP32", "INT64"]),
    "wrong shape": (lambda s: infer(s, "digits", v2(shape=(1, 63))), 400, ["[N, 64]", "[1, 63]"]),
    "data does not fill the shape": (lambda s: infer(s, "digits", v2(shape=(2, 64), data=ROW)), 400, ["shape [2, 64]"]),
    "wrong input name": (lambda s: infer(s, "digits", v2(name="x")), 400, ["named 'input'"]),
    "NaN (JSON)": (
        lambda s: infer(
            s,
            "digits",
            b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [NaN' + b", 1" * 63 + b"]}]}",
        ),
        400,
        ["malformed JSON", "NaN and Infinity"],
    ),
    "inf after FP32 conversion (v1)": (
        lambda s: predict(s, "digits", {"instances": [[1e39] + ROW[1:]]}),
        400,
        ["NaN or infinite"],
    ),
    "NaN (binary)": (lambda s: infer(s, "digits", *binary_body(np.full((1, 64), np.nan, np.float32))), 400, ["64 NaN"]),
    "empty batch": (lambda s: infer(s, "digits", v2(shape=(0, 64), data=[])), 400, ["empty batch"]),
    "empty batch v1": (lambda s: predict(s, "digits", {"instances": []}), 400, ["empty batch"]),
    "unknown model": (lambda s: infer(s, "nope", v2()), 404, ["nope", "does not exist"]),
    "unknown model v1": (lambda s: predict(s, "nope", {"instances": [ROW]}), 404, ["nope"]),
    "too many rows": (lambda s: infer(s, "digits", v2(shape=(1025, 64), data=[0.0])), 400, ["1025 rows", "1024"]),
    "too many rows v1": (lambda s: predict(s, "digits", {"instances": [ROW] * 1025}), 400, ["1025 rows", "1024"]),
    "samples 0": (
        lambda s: infer(s, "mc_triton", v2(parameters={"samples": 0})),
        400,
        ["samples", "between 1 and 1000"],
    ),
    "samples 1001": (
        lambda s: predict(s, "mc_triton", {"instances": [ROW], "parameters": {"samples": 1001}}),
        400,
        ["samples", "1001"],
    ),
    "samples not an integer": (lambda s: infer(s, "mc_triton", v2(parameters={"samples": "ten"})), 400, ["samples"]),
    "JSON booleans as FP32 data": (
        lambda s: infer(s, "digits", v2(data=[True] + ROW[1:])),
        400,
        ["numbers only", "booleans"],
    ),
    "JSON strings as FP32 data": (
        lambda s: infer(s, "digits", v2(data=["1.5"] + ROW[1:])),
        400,
        ["numbers only", "strings"],
    ),
    "JSON booleans v1": (lambda s: predict(s, "digits", {"instances": [[False] + ROW[1:]]}), 400, ["booleans"]),
    "string shape dims": (
        lambda s: infer(s, "digits", v2(shape=("1", 64), data=ROW)),
        400,
        ["shape", "integers", '["1", 64]'],
    ),
    "string shape dims (binary)": (
        lambda s: infer(s, "digits", *binary_body(np.ones((1, 64), np.float32), shape=["1", 64])),
        400,
        ["shape", "integers"],
    ),
    "classification on a per-row output": (
        lambda s: infer(
            s, "mc_triton", v2(outputs=[{"name": "predictive_entropy", "parameters": {"classification": 2}}])
        ),
        400,
        ["no class axis"],
    ),
    "classification out of range": (
        lambda s: infer(s, "digits", v2(outputs=[{"name": "probabilities", "parameters": {"classification": 11}}])),
        400,
        ["between 1 and 10", "11"],
    ),
    "classification not an integer": (
        lambda s: infer(s, "digits", v2(outputs=[{"name": "probabilities", "parameters": {"classification": "3"}}])),
        400,
        ["classification", "integer"],
    ),
    "binary header length too large": (
        lambda s: infer(
            s,
            "digits",
            binary_body(np.ones((1, 64), np.float32))[0],
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "5000"},
        ),
        400,
        ["Inference-Header-Content-Length"],
    ),
    "binary sizes disagree": (
        lambda s: infer(s, "digits", *truncated(binary_body(np.ones((1, 64), np.float32)))),
        400,
        ["declare 256 bytes, 248 follow"],
    ),
    "unknown output": (
        lambda s: infer(s, "digits", v2(outputs=[{"name": "logits"}])),
        400,
        ["logits", "probabilities"],
    ),
    "v1 body not an object": (lambda s: predict(s, "digits", [ROW]), 400, ["instances"]),
    "v1 ragged instances": (lambda s: predict(s, "digits", {"instances": [ROW, ROW[:3]]}), 400, ["instances"]),
    "unload is refused": (
        lambda s: request(f"{s.base}/v2/repository/models/digits/unload", b""),
        400,
        ["fixed at start"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_a_clear_4xx(server, case):
    send, code, words = CASES[case]
    assert_refused(*send(server), code, *words)
    assert get(server.base + "/v2/models/digits/ready")[0] == 200  # still serving that model


def test_body_over_the_size_limit(server):
    limit = 16 * 1024 * 1024
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v2/models/digits/infer")  # declared: refused before the body is read
    conn.putheader("Content-Length", str(limit + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert_refused(response.status, response.read(), 413, str(limit + 1), f"limit of {limit} bytes")
    conn.close()
    chunks = (b"x" * (1 << 20) for _ in range(17))  # streamed without a length: refused once past the limit
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/models/digits:predict", body=chunks, encode_chunked=True)
    response = conn.getresponse()
    assert_refused(response.status, response.read(), 413, f"limit of {limit} bytes")
    conn.close()
    status, body = predict(server, "digits", {"instances": [ROW]})
    assert status == 200, body


def test_largest_allowed_request_is_served(server):
    status, body = predict(server, "mc_triton", {"instances": [ROW] * 1024, "parameters": {"samples": 8}})
    assert status == 200, body[:200]
    assert len(json.loads(body)["predictions"]) == 1024


JSONS = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2000) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=24,
)
TENSORS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "samples", "x"]) | JSONS,
        "shape": st.lists(st.integers(-1, 70), max_size=3) | JSONS,
        "datatype": st.sampled_from(["FP32", "FP16", "INT64", "BYTES", "fp32"]) | JSONS,
        "data": st.lists(st.floats(width=32) | st.integers(-5, 5), max_size=70) | JSONS,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-4, 300)}) | JSONS,
    },
)
PARAMETERS = (
    st.fixed_dictionaries(
        {}, optional={"samples": st.integers(-3, 1200) | JSONS, "binary_data_output": st.booleans() | JSONS}
    )
    | JSONS
)
V2_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(TENSORS, max_size=2) | JSONS,
        "parameters": PARAMETERS,
        "id": JSONS,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["mean", "probabilities", "x"]) | JSONS}), max_size=2
        )
        | JSONS,
    },
)
V1_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "instances": st.lists(st.lists(st.floats(width=32), min_size=64, max_size=64), max_size=3)
        | st.lists(JSONS, max_size=3)
        | JSONS,
        "parameters": PARAMETERS,
    },
)


@st.composite
def bodies(draw):
    """(path, body bytes, headers): JSON requests of the right shape with wrong values, junk JSON, raw bytes."""
    model = draw(st.sampled_from(["digits", "mc_triton", "nope"]))
    v1 = draw(st.booleans())
    path = f"/v1/models/{model}:predict" if v1 else f"/v2/models/{model}/infer"
    kind = draw(st.sampled_from(["structured", "json", "bytes"]))
    if kind == "structured":
        body = json.dumps(draw(V1_BODIES if v1 else V2_BODIES)).encode()
    elif kind == "json":
        body = json.dumps(draw(JSONS)).encode()
    else:
        body = draw(st.binary(max_size=300))
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "application/octet-stream", "text/plain"]))}
    if not v1 and draw(st.booleans()):
        headers["Inference-Header-Content-Length"] = str(draw(st.integers(-1, len(body) + 2) | st.just(len(body))))
    return path, body + draw(st.binary(max_size=300)) if "Inference-Header-Content-Length" in headers else body, headers


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=bodies())
def test_fuzz_no_5xx(server, case):
    path, body, headers = case
    status, answer = request(server.base + path, body, headers)
    assert status < 500, (status, answer[:300])
    if status >= 400:
        assert b"Traceback" not in answer


def test_server_is_live_after_the_bad_requests(server):
    assert get(server.base + "/v2/health/live") == (200, b'{"live":true}')
    status, body = predict(server, "digits", {"instances": [ROW]})
    assert status == 200 and len(json.loads(body)["predictions"][0]) == 10
