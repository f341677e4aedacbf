"""The serve process: no TensorFlow, graceful SIGTERM, one-line errors for bad command lines."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.serve.support import ServerProcess, get, request

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
heavy = ("tensorflow", "tf_keras", "keras", "tf2onnx", "tensorflow_model_optimization",
         "deploykit.backend", "deploykit.io", "deploykit.chain")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def deploykit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploykit.cli.main", *args], capture_output=True, text=True, timeout=timeout)


def test_serving_imports_no_tensorflow(model_repo):
    """The CLI, the model loading and the server set-up of `deploykit serve` import neither TensorFlow nor the
    modules that need it."""
    done = subprocess.run([sys.executable, "-c", "import json\n" + NO_HEAVY_IMPORTS, str(model_repo)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight(model_repo, tmp_path):
    server = ServerProcess(model_repo / "mc_triton", tmp_path / "server.log")
    x = np.random.default_rng(0).uniform(0, 16, (1024, 64)).round(1)
    body = json.dumps({"instances": x.tolist(), "parameters": {"samples": 500}}).encode()
    answer = {}

    def slow_request():
        answer["status"], answer["body"] = request(f"{server.base}/v1/models/mc_triton:predict", body)
        answer["at"] = time.monotonic()

    worker = threading.Thread(target=slow_request)
    worker.start()
    time.sleep(0.3)  # the request is being computed (1024 x 500 network rows)
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


@pytest.mark.slow
def test_bad_command_lines_fail_in_one_line(model_repo, tmp_path):
    cases = [
        (["serve", str(tmp_path / "missing")], 2, "no such file or folder"),
        (["serve", str(model_repo), "--samples", "0"], 2, "samples must be an integer"),
        (["serve", str(model_repo), "--port", "70000"], 2, "port must be an integer"),
        (["serve", str(model_repo), "--samples", "500", "--max-samples", "100"], 2,
         "samples must be an integer between 1 and 100"),
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
    for text in ("--host", "--port", "--samples", "--threads", "--max-rows", "--max-body-bytes", "/v2/models/NAME/infer"):
        assert text in done.stdout
