"""Run ``deploykit serve`` in a subprocess on a free loopback port, and plain HTTP calls to it."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``deploykit serve SOURCE --port <free> ARGS...``; ready once /v2/health/ready answers 200."""

    def __init__(self, source: Path, log: Path, *args: str, nofile: int | None = None):
        """``nofile``: the server's RLIMIT_NOFILE (soft and hard), to test running out of descriptors."""
        self.port = free_port()
        self.url = f"{HOST}:{self.port}"
        self.base = f"http://{self.url}"
        self.log = log
        cmd = [sys.executable, "-m", "deploykit.cli.main", "serve", str(source), "--port", str(self.port), *args]
        limit = None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit)
        self._wait_ready(60.0)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"deploykit serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if get(self.base + "/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError(f"deploykit serve not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@contextlib.contextmanager
def serving(source: Path, log: Path, *args: str):
    """A ServerProcess for a fixture's lifetime; it must stop cleanly (exit 0 on SIGTERM) when the fixture ends."""
    process = ServerProcess(source, log, *args)
    try:
        yield process
    except BaseException:
        process.stop()
        raise
    assert process.stop() == 0, process.log.read_text()


@contextlib.contextmanager
def triton_client(url: str):
    """tritonclient's HTTP client on a running server."""
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(url) as client:
        yield client


def request(
    url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None, timeout: float = 60.0
) -> tuple[int, bytes]:
    """(status, body) of one HTTP call; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def get(url: str) -> tuple[int, bytes]:
    return request(url, timeout=2.0)


def post_json(url: str, payload) -> tuple[int, dict]:
    status, body = request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


def check_example_client(url: str, model: str, says: list[str], never: list[str]) -> None:
    """Run examples/client_tritonclient.py against a served model: it exits 0, prints every ``says`` text and no
    ``never`` text (the example is what users copy, so its output is part of what the tests hold)."""
    example = Path(__file__).resolve().parents[2] / "examples" / "client_tritonclient.py"
    done = subprocess.run(
        [sys.executable, str(example), "--url", url, "--model", model],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for text in says:
        assert text in done.stdout, done.stdout
    for text in never:
        assert text not in done.stdout, done.stdout
