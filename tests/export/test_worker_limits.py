"""The runtime worker of ``validate`` (issue 26 item 4): a time limit per call, and it dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from deploykit.export.isolated import (
    RuntimeTimeoutError,
    RuntimeWorker,
    runtime_timeout,
)
from tests.security import hostile_onnx

pytestmark = pytest.mark.slow  # each test starts runtime workers (a fresh interpreter importing onnxruntime)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def test_a_call_past_the_time_limit_kills_the_worker(tmp_path):
    path = hostile_onnx.slow_loop_model(tmp_path, "endless.onnx", offset=1.0)
    worker = RuntimeWorker(timeout=3.0)
    pid = worker.ping()["pid"]
    t0 = time.monotonic()
    with pytest.raises(RuntimeTimeoutError, match=r"endless.onnx: onnxruntime did not finish loading it within 3 s"):
        worker.open(path)
    assert time.monotonic() - t0 < 10
    time.sleep(0.2)
    assert not _alive(pid)
    good = hostile_onnx.honest_external_model(tmp_path)
    assert worker.open(good).input_shape == (4,)  # a fresh worker for the next artifact
    worker.close()


def test_the_time_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_RUNTIME_TIMEOUT", "12.5")
    assert runtime_timeout() == 12.5
    monkeypatch.setenv("DEPLOYKIT_RUNTIME_TIMEOUT", "soon")
    with pytest.raises(Exception, match="DEPLOYKIT_RUNTIME_TIMEOUT must be a positive number"):
        runtime_timeout()


@pytest.mark.parametrize("main_thread", [True, False])
def test_the_busy_worker_dies_with_its_parent(tmp_path, main_thread):
    """SIGTERM to a process validating an endless model: its worker must not stay behind, spinning."""
    path = hostile_onnx.slow_loop_model(tmp_path, "endless.onnx", offset=1.0)
    script = (
        "import sys, threading\n"
        "from deploykit.export.isolated import RuntimeWorker\n"
        "w = RuntimeWorker(timeout=600)\n"
        "def go():\n"
        "    print(w.ping()['pid'], flush=True)\n"
        f"    w.open({str(path)!r})\n"
        f"threading.Thread(target=go).start() if {not main_thread} else go()\n"
        "threading.Event().wait(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    child = int(parent.stdout.readline())
    time.sleep(1.5)  # the worker is in the endless Loop now
    assert _alive(child)
    parent.send_signal(signal.SIGTERM)
    parent.wait(10)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the worker outlived its parent"
