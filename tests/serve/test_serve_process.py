"""The serve process: no TensorFlow, graceful SIGTERM, one-line errors for bad command lines."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.serve.support import ServerProcess, get, request

pytestmark = pytest.mark.slow  # every test here starts a server process

NO_HEAVY_IMPORTS = """
import sys
from deploykit.cli.main import build_parser
from deploykit.serve.config import ServeConfig
from deploykit.serve.discover import discover_models
from deploykit.serve.server import DeployKitModelServer, load_models

build_parser().parse_args(["serve", sys.argv[1]])
config = ServeConfig()
models = load_models(discover_models(sys.argv[1]), config)
DeployKitModelServer(config)
assert [m.name for m in models], "no models"
heavy = ("tensorflow", "tf_keras", "keras", "tf2onnx", "tensorflow_model_optimization", "onnx",
         "deploykit.backend", "deploykit.io.models", "deploykit.core.chain", "deploykit.uncertainty")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def deploykit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploykit.cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


def test_serving_imports_no_tensorflow(model_repo):
    """The CLI, the model loading and the server set-up of `deploykit serve` import neither TensorFlow nor the
    modules that need it."""
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + NO_HEAVY_IMPORTS, str(model_repo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_sigterm_finishes_the_request_in_flight(model_repo, tmp_path):
    server = ServerProcess(
        model_repo / "mc_triton",
        tmp_path / "server.log",  # limits raised for a long request
        "--max-network-rows",
        "600000",
        "--max-response-values",
        "6000000",
        "--request-timeout",
        "120",
    )
    x = np.random.default_rng(0).uniform(0, 16, (1024, 64)).round(1)
    body = json.dumps({"instances": x.tolist(), "parameters": {"samples": 500}}).encode()
    answer = {}

    def slow_request():
        answer["status"], answer["body"] = request(f"{server.base}/v1/models/mc_triton:predict", body)
        answer["at"] = time.monotonic()

    worker = threading.Thread(target=slow_request)
    start = _cpu_seconds(server.proc.pid)
    worker.start()
    deadline = time.monotonic() + 30
    while _cpu_seconds(server.proc.pid) - start < 0.15 and time.monotonic() < deadline:  # computing, not a fixed guess
        time.sleep(0.01)
    signalled = time.monotonic()
    code = server.stop()
    worker.join(60)
    assert code == 0, server.log.read_text()
    assert answer["status"] == 200, answer["body"][:300]
    assert answer["at"] > signalled, "the request finished before the signal: nothing was in flight"
    assert len(json.loads(answer["body"])["predictions"]) == 1024
    try:
        refused = get(server.base + "/v2/health/live")[0] != 200
    except OSError:
        refused = True
    assert refused  # no longer listening
    assert "Traceback" not in server.log.read_text()


def test_bad_command_lines_fail_in_one_line(model_repo, tmp_path):
    cases = [
        (["serve", str(tmp_path / "missing")], 2, "no such file or folder"),
        (["serve", str(model_repo), "--samples", "0"], 2, "samples must be an integer"),
        (["serve", str(model_repo), "--port", "70000"], 2, "port must be an integer"),
        (
            ["serve", str(model_repo), "--samples", "500", "--max-samples", "100"],
            2,
            "samples must be an integer in [1, 100], got 500",
        ),
    ]
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    cases.append((["serve", str(tmp_path / "broken.onnx")], 1, "onnxruntime cannot load it"))
    for args, code, message in cases:
        done = deploykit(*args)
        assert done.returncode == code, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = deploykit("serve", str(model_repo / "digits.onnx"), "--port", str(taken.getsockname()[1]))
    assert done.returncode == 1 and "address already in use" in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("(see the error above)")


def test_help_names_the_endpoints():
    done = deploykit("serve", "--help")
    assert done.returncode == 0
    for text in (
        "--host",
        "--port",
        "--samples",
        "--threads",
        "--max-rows",
        "--max-body-bytes",
        "/v2/models/NAME/infer",
        "--name",
        "--max-network-rows",
        "--max-response-values",
        "--max-header-count",
        "--max-header-bytes",
        "--header-timeout",
        "--body-timeout",
        "--keep-alive-timeout",
        "--max-connections",
        "/v2/models/NAME/config",
        "/v2/repository/index",
    ):
        assert text in done.stdout


def onnx_with_mixed_inputs(path) -> None:
    """An ONNX model deploykit cannot serve: a float input beside a string one (several float inputs are served,
    one v2 tensor each)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 64]),
        helper.make_tensor_value_info("b", TensorProto.STRING, ["N", 64]),
    ]
    output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 64])
    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["probabilities"])], "two", inputs, [output])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def onnx_with_initializer_inputs(path) -> None:
    """As tf2onnx often writes: a weight that is also a graph input (onnxruntime: an overridable initializer)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 3]),
    ]
    output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])
    weight = numpy_helper.from_array(np.full((64, 3), 0.5, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["probabilities"])], "init", inputs, [output], initializer=[weight]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_unservable_models_are_skipped_with_a_warning(model_repo, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "digits.onnx").write_bytes((model_repo / "digits.onnx").read_bytes())
    (folder / "broken.onnx").write_bytes(b"not an onnx file")
    onnx_with_mixed_inputs(folder / "two_inputs.onnx")
    onnx_with_initializer_inputs(folder / "tf2onnx_style.onnx")
    server = ServerProcess(folder, tmp_path / "server.log")
    try:
        status, body = request(
            f"{server.base}/v1/models/digits:predict", json.dumps({"instances": [[1.0] * 64]}).encode()
        )
        assert status == 200, body
        status, body = request(
            f"{server.base}/v1/models/tf2onnx_style:predict", json.dumps({"instances": [[1.0] * 64]}).encode()
        )
        assert status == 200 and json.loads(body)["predictions"] == [[32.0] * 3], body  # the initializer's weights
        assert get(f"{server.base}/v2/models/two_inputs/ready")[0] == 404
    finally:
        assert server.stop() == 0
    warnings = [line for line in server.log.read_text().splitlines() if line.startswith("warning: skipping model")]
    assert len(warnings) == 2, server.log.read_text()
    assert any("'broken'" in w and "onnxruntime cannot load it" in w for w in warnings)
    assert any("'two_inputs'" in w and "expected one float32 input" in w for w in warnings)


def test_name_option(model_repo, tmp_path):
    server = ServerProcess(model_repo / "mc_triton", tmp_path / "server.log", "--name", "fashion-mc")
    try:
        assert get(f"{server.base}/v2/models/fashion-mc/ready")[0] == 200
        assert get(f"{server.base}/v2/models/mc_triton/ready")[0] == 404
    finally:
        assert server.stop() == 0
    done = deploykit("serve", str(model_repo), "--name", "x")
    assert done.returncode == 2 and "--name names one model" in done.stderr and "holds 3" in done.stderr, done.stderr
    done = deploykit("serve", str(model_repo / "digits.onnx"), "--name", "a/b")
    assert done.returncode == 2 and "model name 'a/b' (from --name)" in done.stderr, done.stderr


def test_only_deploykit_lines_unless_verbose(model_repo, tmp_path):
    """kserve's "OpenAI endpoints not registered", uvicorn's start-up lines: shown with --verbose only."""
    foreign = (
        "OpenAI endpoints",
        "Time series endpoints",
        "Registering model",
        "Started server process",
        "Uvicorn running",
        "Application startup",
    )
    for args, shown in (((), False), (("--verbose",), True)):
        server = ServerProcess(model_repo / "digits.onnx", tmp_path / f"server{len(args)}.log", *args)
        time.sleep(0.3)
        assert server.stop() == 0
        log = server.log.read_text()
        assert all((text in log) == shown for text in foreign), log
        if not shown:
            lines = log.splitlines()
            assert lines[0].startswith("model 'digits': deterministic") and lines[2].startswith("serving on")
            assert len(lines) == 4 and "stopped after" in lines[3], log


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc): rises once the server is computing the request."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
