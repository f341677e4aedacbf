"""A slow model cannot take the server down (issue 26 items 1-3 and the SIGHUP item), end to end with a real client.

The served folder holds a good model, a model whose ``Loop`` runs ~forever on a row of ones (``slow``), one that
never finishes any row (``endless``), one whose external data points out of the folder (``leak``)
and one with honest external data (``ext``), all built with onnx's helpers as the attack built them.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest

from tests.security import hostile_onnx
from tests.serve.support import ServerProcess, get, post_json, serving

pytestmark = pytest.mark.slow  # every test drives a server process

TIMEOUT = 2.0
BAD_NAMES = ["model (1).onnx", "._model.onnx", "mod\u00e8le.onnx", "m" * 130 + ".onnx", "-x.onnx"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("deadline")
    models = root / "models"
    models.mkdir()
    (root / "secret.bin").write_bytes(hostile_onnx.SECRET)
    hostile_onnx.honest_external_model(models, "good.onnx", "good.bin")
    hostile_onnx.honest_external_model(models, "ext.onnx", "ext.bin")
    hostile_onnx.slow_loop_model(models, "slow.onnx")
    hostile_onnx.slow_loop_model(models, "endless.onnx", offset=1.0)
    hostile_onnx.external_data_model(models, "../secret.bin", "leak.onnx")
    for name in BAD_NAMES:  # copies of a good model under names that cannot be model names
        hostile_onnx.slow_loop_model(models, name)
    (models / "m" / "\u00b2").mkdir(parents=True)  # a Triton version folder named '²' ('²'.isdigit() is True)
    hostile_onnx.slow_loop_model(models / "m" / "\u00b2", "model.onnx")
    return models


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    with serving(folder, tmp_path_factory.mktemp("log") / "server.log", "--request-timeout", str(TIMEOUT)) as process:
        yield process


def _infer(server, model: str, rows) -> tuple[int, dict]:
    return post_json(
        f"{server.base}/v2/models/{model}/infer",
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [len(rows), 4],
                    "datatype": "FP32",
                    "data": np.asarray(rows).ravel().tolist(),
                }
            ]
        },
    )


def test_a_model_that_never_answers_gets_504_each_time_and_keeps_its_threads(server):
    for _ in range(3):  # more requests than the model has threads: each stopped call freed its thread
        t0 = time.monotonic()
        status, body = _infer(server, "endless", [[0, 0, 0, 0]])
        assert status == 504 and "request timeout of 2 s" in body["error"], body
        assert time.monotonic() - t0 < TIMEOUT + 3
    assert get(f"{server.base}/v2/health/live")[0] == 200


def test_v1_requests_get_the_same_deadline(server):
    t0 = time.monotonic()
    status, body = post_json(f"{server.base}/v1/models/slow:predict", {"instances": [[1, 1, 1, 1]]})
    assert status == 504 and "request timeout of 2 s" in body["error"], body
    assert time.monotonic() - t0 < TIMEOUT + 3


def test_unservable_models_are_skipped_with_one_line_each(server):
    log = server.log.read_text()
    leak = [line for line in log.splitlines() if "skipping model 'leak'" in line]
    assert len(leak) == 1 and "leads out of the model's folder" in leak[0], log
    assert get(f"{server.base}/v2/models/leak")[0] == 404


def test_badly_named_files_are_skipped_with_one_line_each(server, folder):
    log = server.log.read_text()
    for name in BAD_NAMES:
        lines = [line for line in log.splitlines() if line.startswith(f"warning: skipping '{folder / name}'"[:150])]
        assert len(lines) == 1 and "cannot" not in lines[0][:20] and "must be at most 128 ASCII" in lines[0], log
    version = [line for line in log.splitlines() if "version folders are named with ASCII digits only" in line]
    assert len(version) == 1 and str(folder / "m" / "\u00b2") in version[0], log
    assert "Traceback" not in log and "ValueError" not in log
    index = post_json(f"{server.base}/v2/repository/index", {})[1]
    assert sorted(m["name"] for m in index) == ["endless", "ext", "good", "slow"]


def test_external_data_outside_the_folder_never_reaches_a_client(server):
    status, body = _infer(server, "leak", [[1, 0, 0, 0]])
    assert status == 404
    assert b"TOP-SECRET" not in json.dumps(body).encode()


def test_slow_request_gets_504_while_health_and_other_models_answer(server):
    result = {}

    def slow():
        t0 = time.monotonic()
        result["answer"] = _infer(server, "slow", [[1, 1, 1, 1]])
        result["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    health, good = [], []
    while thread.is_alive():
        t0 = time.monotonic()
        assert get(f"{server.base}/v2/health/live")[0] == 200
        health.append(time.monotonic() - t0)
        status, body = _infer(server, "good", [[1, 1, 1, 1]])
        assert status == 200, body
        good.append(body)
        time.sleep(0.05)
    thread.join()
    status, body = result["answer"]
    assert status == 504, body
    assert "did not answer within the request timeout of 2 s" in body["error"]
    assert TIMEOUT - 0.1 < result["seconds"] < TIMEOUT + 3
    assert len(health) >= 5 and max(health) < 0.5, health
    expected = (np.ones((1, 4)) @ hostile_onnx.WEIGHTS).ravel()
    np.testing.assert_allclose(good[-1]["outputs"][0]["data"], expected, rtol=1e-6)
    # the stopped call freed its thread: the model answers a fast row again, twice (both threads)
    for _ in range(2):
        status, body = _infer(server, "slow", [[0, 0, 0, 0]])
        assert status == 200 and body["outputs"][0]["data"] == [0.0] * 4, body


def test_lower_case_datatype_is_a_400(server):
    status, body = post_json(
        f"{server.base}/v2/models/good/infer",
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "fp32", "data": [1, 1, 1, 1]}]},
    )
    assert status == 400 and "FP32" in body["error"], body


def test_external_data_truncated_under_the_server(server, folder):
    (folder / "ext.bin").write_bytes(b"")  # `cp empty ext.bin`: truncated in place
    status, body = _infer(server, "ext", [[1, 1, 1, 1]])
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"][0]["data"], (np.ones((1, 4)) @ hostile_onnx.WEIGHTS).ravel(), rtol=1e-6)
    assert server.proc.poll() is None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_a_server_with_a_stuck_request_within_its_grace(folder, tmp_path, sig):
    process = ServerProcess(folder, tmp_path / "server.log", "--request-timeout", "5")
    answers = []
    stuck = threading.Thread(target=lambda: answers.append(_infer(process, "slow", [[1, 1, 1, 1]])))
    stuck.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    process.proc.send_signal(sig)
    code = process.proc.wait(40)
    took = time.monotonic() - t0
    stuck.join(10)
    log = process.log.read_text()
    assert code == 0, log
    assert took < 15, took  # within the 30 s grace period: the stuck call is stopped at its 5 s deadline
    assert "stopped after" in log, log
