"""Hostile clients (issue 13, items 3-5 and 7): the server refuses them quickly and keeps serving everyone else.

Each test reproduces an attack on a real ``deploykit serve`` process over
loopback sockets. Time bounds are generous (the machine is a shared, loaded
2-core box); the tight targets (431 in < 100 ms, health < 50 ms) are measured
side by side with good clients in ``benchmarks/bench_serve.py``. Before the
fixes, the header flood blocked health for 17-27 s and 300 stalled connections
stopped every new request until they went away.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time

import numpy as np
import pytest

from tests.serve.support import HOST, ServerProcess, get, request

pytestmark = pytest.mark.slow  # each test drives a server process for seconds

ROW = [1.0] * 64
GOOD = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}).encode()
JSON = {"Content-Type": "application/json"}


def timed_health(server) -> float:
    started = time.perf_counter()
    assert get(server.base + "/v2/health/live")[0] == 200
    return time.perf_counter() - started


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[float, bytes]:
    """Send ``data`` on a fresh connection, read until the server closes: (seconds, answer)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        started = time.perf_counter()
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before all was sent
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return time.perf_counter() - started, answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def error_of(answer: bytes) -> str:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


def header_flood(count: int = 50_000) -> bytes:
    """The attack: 50,000 tiny headers (~0.6 MB) on an infer request."""
    head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
    return head + b"".join(b"x%d: y\r\n" % i for i in range(count)) + b"\r\n"


def test_header_flood_is_refused_before_routing_while_health_answers(server):
    flood = header_flood()
    seconds, answer = raw_exchange(server.port, flood)
    assert status_of(answer) == 431 and "more than 100 request headers" in error_of(answer), answer[:200]
    refusals, health = [], []
    stop = threading.Event()

    def attacker():
        for _ in range(20):  # bounded
            if stop.is_set():
                break
            refusals.append(raw_exchange(server.port, flood))

    thread = threading.Thread(target=attacker)
    thread.start()
    try:
        for _ in range(10):
            health.append(timed_health(server))
    finally:
        stop.set()
        thread.join(60)
    assert all(status_of(a) == 431 for _, a in refusals)
    # Before: every request waited 17-27 s. Generous bounds for a loaded machine (measured: see notes).
    assert max(s for s, _ in refusals) < 2.0, [round(s, 3) for s, _ in refusals]
    assert max(health) < 1.0 and statistics.median(health) < 0.25, [round(h, 3) for h in health]


def test_huge_header_value_is_refused(server):
    big = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (50 << 20) + b"\r\n\r\n"
    seconds, answer = raw_exchange(server.port, big, timeout=30)
    assert status_of(answer) == 431 and "exceed the limit of 32768 bytes" in error_of(answer), answer[:200]
    assert seconds < 5.0  # refused after the first 32 KiB, not after reading 50 MB
    status, body = request(server.base + "/v2/models/digits/infer", GOOD, JSON)
    assert status == 200, body


def test_heavy_mc_request_is_refused_before_it_runs(server):
    """The attack: 1,024 rows with samples=1000 on a model returning the raw samples (97.5 MB of JSON before)."""
    x = np.ones((1024, 64), np.float32).tolist()
    body = json.dumps({"instances": x, "parameters": {"samples": 1000}}).encode()
    started = time.perf_counter()
    status, answer = request(f"{server.base}/v1/models/mc_triton:predict", body, JSON)
    assert status == 400 and "1024000 network rows" in json.loads(answer)["error"], answer[:300]
    assert time.perf_counter() - started < 5.0
    body = json.dumps({"instances": x, "parameters": {"samples": 200}}).encode()  # within the work, not the response
    status, answer = request(f"{server.base}/v1/models/mc_triton:predict", body, JSON)
    message = json.loads(answer)["error"]
    assert status == 400 and "response would hold" in message and "2000000" in message, message


def test_health_answers_during_a_heavy_request(server):
    """A large allowed request runs in a worker thread: health does not wait for it.

    Heavy requests are sent back to back for the whole probing window, so every
    health probe overlaps one (a single request raced a fixed sleep and, on a
    fast machine, finished before the first probe).
    """
    x = np.random.default_rng(0).uniform(0, 16, (1024, 64)).astype(np.float32).tolist()
    body = json.dumps(
        {
            "inputs": [{"name": "input", "shape": [1024, 64], "datatype": "FP32", "data": sum(x, [])}],
            "parameters": {"samples": 250},
            "outputs": [{"name": "mean"}],
        }
    ).encode()
    stop, answers, sent = threading.Event(), [], threading.Event()

    def heavy():
        while not stop.is_set():
            sent.set()
            started = time.perf_counter()
            status, answer = request(f"{server.base}/v2/models/mc_triton/infer", body, JSON)
            answers.append((status, answer, time.perf_counter() - started))

    thread = threading.Thread(target=heavy)
    thread.start()
    assert sent.wait(10)
    time.sleep(0.05)  # the first request is on the wire
    health, deadline = [], time.monotonic() + 60
    while (len(answers) < 2 or len(health) < 30) and time.monotonic() < deadline:  # whole requests covered
        health.append(timed_health(server))
        time.sleep(0.005)
    stop.set()
    thread.join(120)
    assert answers and all(status == 200 for status, _, _ in answers), [a[1][:300] for a in answers[:1]]
    assert json.loads(answers[0][1])["outputs"][0]["shape"] == [1024, 10]
    seconds = [s for _, _, s in answers]
    shown = ([round(s, 3) for s in seconds], sorted(round(h, 4) for h in health))
    # waiting behind a heavy request would cost a probe part of one (0.2 s and more): health answers in far less
    assert max(health) < 1.0 and statistics.median(health) < 0.1 * min(seconds), shown


def test_names_echoed_in_errors_and_logs_are_bounded_and_escaped(server):
    long_name = "m" * 20_000
    status, body = request(f"{server.base}/v2/models/{long_name}/infer", GOOD, JSON)
    message = json.loads(body)["error"]
    assert status == 404 and len(message) < 200 and "20000 characters" in message, message[:300]
    payload = json.dumps({"inputs": [{"name": "n" * 1_000_000, "shape": [1, 64], "datatype": "FP32", "data": ROW}]})
    status, body = request(f"{server.base}/v2/models/digits/infer", payload.encode(), JSON)
    assert status == 400 and len(body) < 400, body[:400]
    status, body = request(f"{server.base}/v2/models/nope%0A2026-01-01%20FORGED/infer", GOOD, JSON)
    assert status == 404 and "\\n" in json.loads(body)["error"]
    time.sleep(0.2)
    lines = server.log.read_text().splitlines()
    assert not any(line.startswith("2026-01-01 FORGED") for line in lines)
    assert all(len(line) < 2000 for line in lines)


@pytest.fixture(scope="module")
def strict_server(model_repo, tmp_path_factory):
    """A server with 256 descriptors (as the attack's machine) and 1-second timeouts."""
    process = ServerProcess(
        model_repo / "digits.onnx",
        tmp_path_factory.mktemp("strict") / "server.log",
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--keep-alive-timeout",
        "1",
        nofile=256,
    )
    yield process
    assert process.stop() == 0, process.log.read_text()


def test_stalled_connections_do_not_stop_a_new_request(strict_server):
    """300 stalled connections (nothing sent, half a head, half a body) on a 256-descriptor server."""
    stalled = []
    try:
        for i in range(300):
            s = socket.create_connection((HOST, strict_server.port), timeout=5)
            if i % 3 == 1:
                s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n")
            elif i % 3 == 2:
                s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n{")
            stalled.append(s)
        started = time.perf_counter()
        status, body = request(f"{strict_server.base}/v2/models/digits/infer", GOOD, JSON, timeout=10)
        assert status == 200, body
        assert time.perf_counter() - started < 5.0
    finally:
        for s in stalled:
            s.close()


def test_timeouts_close_slow_and_idle_connections(strict_server):
    started = time.perf_counter()
    seconds, answer = raw_exchange(strict_server.port, b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n")
    assert status_of(answer) == 408 and "headers not received within 1 s" in error_of(answer), answer
    assert 0.9 < seconds < 5.0
    head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n{"
    seconds, answer = raw_exchange(strict_server.port, head)
    assert status_of(answer) == 408 and "body not received within 1 s" in error_of(answer), answer
    seconds, answer = raw_exchange(strict_server.port, b"")  # connects, sends nothing: closed without an answer
    assert answer == b"" and 0.9 < seconds < 5.0
    keep_alive = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"  # answered, then idle: closed
    seconds, answer = raw_exchange(strict_server.port, keep_alive)
    assert status_of(answer) == 200 and 0.9 < seconds < 5.0
    assert time.perf_counter() - started < 20


def test_header_limits_are_options(model_repo, tmp_path):
    server = ServerProcess(model_repo / "digits.onnx", tmp_path / "server.log", "--max-header-count", "8")
    try:
        headers = b"".join(b"x%d: y\r\n" % i for i in range(9))
        _, answer = raw_exchange(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert status_of(answer) == 431 and "more than 8 request headers" in error_of(answer)
        _, answer = raw_exchange(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(answer) == 200
    finally:
        assert server.stop() == 0


def test_sigterm_with_a_stalled_upload_exits_quickly_in_one_line(model_repo, tmp_path):
    server = ServerProcess(model_repo / "digits.onnx", tmp_path / "server.log")
    upload = socket.create_connection((HOST, server.port), timeout=10)
    upload.sendall(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100000\r\n\r\n{"inputs": ['
    )
    head = socket.create_connection((HOST, server.port), timeout=10)
    head.sendall(b"GET /v2/heal")
    time.sleep(0.3)
    started = time.perf_counter()
    try:
        code = server.stop(timeout=10)
    finally:
        upload.close()
        head.close()
    seconds = time.perf_counter() - started
    log = server.log.read_text()
    assert code == 0 and seconds < 5.0, (seconds, log)
    assert "Traceback" not in log
    after_start = log.split("serving on", 1)[1].splitlines()[1:]
    assert len(after_start) == 1 and "stopped after" in after_start[0], log
