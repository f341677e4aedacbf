"""Load and run artifacts in a child process, so a native crash fails one artifact, not the whole run.

onnxruntime and LiteRT are C++ libraries: a bad artifact can abort the
process (LiteRT's XNNPACK delegate double-frees on a requantization
multiplier >= 256) instead of raising. :func:`validate` therefore loads and
runs each artifact in a :class:`RuntimeWorker`, a long-lived child reused
across artifacts. A child that dies becomes a
:class:`~deploykit.errors.RuntimeCrashError` naming the artifact, the
runtime, the stage and the signal; the next call starts a fresh child. A
runtime's own exception (LiteRT's ``RuntimeError`` from a kernel that cannot
prepare) is a :class:`~deploykit.errors.RuntimeFailureError`: it too fails
that artifact only.

The child is started as a fresh ``python`` running :func:`main` (like
multiprocessing's "spawn": a fresh interpreter, never a fork of a process
that imported TensorFlow) rather than through multiprocessing itself, whose
spawn re-imports the parent's ``__main__`` and with it whatever that script
imports at the top (TensorFlow, for most scripts that export). The child
imports numpy and the runtimes only. Latency is measured inside the child, on
the runtime alone.

Every call has a time limit (``DEPLOYKIT_RUNTIME_TIMEOUT`` seconds, default
:data:`DEFAULT_TIMEOUT`): a child still busy then (a ``Loop`` that never ends)
is killed and the call raises :class:`RuntimeTimeoutError`. The child dies with
its parent: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux when the parent's
main thread started it, and a watchdog thread that polls the parent's pid
everywhere, so a SIGTERM to ``deploykit validate`` never orphans a busy worker.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError, ModelLoadError, RuntimeCrashError, RuntimeFailureError, one_line
from deploykit.export.runtimes import (
    artifact_quantization,
    median_seconds,
    open_runner,
    predict_batches,
    runner_class,
    time_files,
)

LOADING, RUNNING = "loading it", "running it"
#: Seconds one call to the worker may take (loading, or measuring 50 repeats at each batch size).
DEFAULT_TIMEOUT = 600.0
_TIMEOUT_ENV = "DEPLOYKIT_RUNTIME_TIMEOUT"
_STARTUP_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1
#: stderr lines that precede a crash without explaining it (runtime logs, faulthandler's trace).
_NOT_THE_CAUSE = (
    "INFO:",
    "WARNING:",
    "Fatal Python error",
    "Current thread",
    "File ",
    "Extension modules",
    "Thread 0x",
)


@dataclass(frozen=True)
class OpenedArtifact:
    """What the runtime says about an artifact it loaded."""

    format: str  # ExportFormat value
    runtime: str
    input_shape: tuple[int, ...]
    quantization: str | None  # asked for only when the caller does not know it
    reference_accuracy: float | None  # from an ONNX file's deploykit metadata
    output_name: str = ""  # the output the runner reads (deploykit.core.contract.main_output)
    outputs: dict = field(default_factory=dict)  # {name: (dtype, shape)} as the runtime declares them
    output_kind: str | None = None  # an ONNX file's deploykit.core.task output kind (None: its metadata says none)


@dataclass(frozen=True)
class Measured:
    """Predictions on the inputs (the main output: probabilities, or a regressor's prediction), and the median
    seconds per call at each batch size."""

    outputs: np.ndarray
    seconds: dict[int, float]


class InProcess:
    """Loads and runs artifacts in this process (no protection from native crashes; for comparison)."""

    def __init__(self) -> None:
        self._runner = None
        self._where = ""

    def open(self, path: str | os.PathLike, threads: int | None = None, describe: bool = False) -> OpenedArtifact:
        path = Path(path)
        self._where = f"{path.name}: {runner_class(path).runtime} failed while"
        try:
            self._runner, info = _open(path, threads, describe)
        except DeployKitError:
            raise
        except Exception as exc:
            raise RuntimeFailureError(f"{self._where} {LOADING}: {one_line(exc)}") from exc
        return info

    def measure(self, x: np.ndarray, batch_sizes: tuple[int, ...], repeats: int) -> Measured:
        try:
            return _measure(self._runner, x, batch_sizes, repeats)
        except DeployKitError:
            raise
        except Exception as exc:
            raise RuntimeFailureError(f"{self._where} {RUNNING}: {one_line(exc)}") from exc

    def close(self) -> None:
        self._runner = None


class RuntimeTimeoutError(RuntimeCrashError):
    """The runtime worker did not answer within its time limit; it was killed (the artifact fails, the run goes on)."""

    def __init__(self, artifact: str, runtime: str, stage: str, seconds: float):
        self.artifact, self.mismatches, self.report = artifact, [], None
        self.runtime, self.stage, self.signal, self.exitcode = runtime, stage, None, None
        DeployKitError.__init__(
            self,
            f"{artifact}: {runtime} did not finish {stage} within {seconds:g} s; the "
            f"runtime worker was stopped (raise the limit with {_TIMEOUT_ENV}=SECONDS)",
        )


def runtime_timeout() -> float:
    """The worker's time limit per call: ``DEPLOYKIT_RUNTIME_TIMEOUT`` if set, else DEFAULT_TIMEOUT."""
    raw = os.environ.get(_TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        from deploykit.errors import ConfigError

        raise ConfigError(f"{_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


class RuntimeWorker:
    """One child process that loads and runs artifacts on request; restarted after it dies."""

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout  # None: runtime_timeout() at each call
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._stderr = None  # the child's stderr, a file: what a dying runtime printed last names the crash
        self._stderr_mark = 0  # where the current request's stderr starts
        self._artifact = ("no artifact", "the runtime")  # (file name, runtime) of the artifact being served
        self._lock = threading.Lock()

    def open(self, path: str | os.PathLike, threads: int | None = None, describe: bool = False) -> OpenedArtifact:
        path = Path(path)
        with self._lock:
            self._artifact = (path.name, runner_class(path).runtime)
            return self._call(("open", str(path), threads, describe), LOADING)

    def measure(self, x: np.ndarray, batch_sizes: tuple[int, ...], repeats: int) -> Measured:
        with self._lock:
            return self._call(
                ("measure", np.ascontiguousarray(x, dtype=np.float32), tuple(batch_sizes), repeats), RUNNING
            )

    def time_files(self, files: dict, x: np.ndarray, batch_size: int, calls: tuple[int, int], seconds: float, cap: int):
        """:func:`deploykit.export.runtimes.time_files` of ``files`` in the child: their calls interleaved there; a
        crash names them all (the caller times them one by one to find which)."""
        with self._lock:
            self._artifact = (", ".join(map(str, files)), "the runtimes")
            request = ("time", {n: str(p) for n, p in files.items()}, np.ascontiguousarray(x, dtype=np.float32))
            return self._call((*request, batch_size, tuple(calls), seconds, cap), "timing")

    def ping(self) -> dict:
        """The child's pid and whether it imported TensorFlow (it must not)."""
        with self._lock:
            return self._call(("ping",), "starting")

    def close(self) -> None:
        """Stop the child (it exits when its end of the connection closes)."""
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._stderr is not None:
            self._stderr.close()
        self._process = self._conn = self._stderr = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the deploykit this process runs, first on the child's path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        main_thread = threading.current_thread() is threading.main_thread()  # PDEATHSIG follows the starting thread
        code = f"from deploykit.export.isolated import main; main({theirs.fileno()}, {os.getpid()}, {main_thread})"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
        )
        theirs.close()
        self._conn = Connection(ours.detach())

    def _call(self, request: tuple, stage: str):
        seconds = self.timeout or runtime_timeout()
        if self._process is None or self._process.poll() is not None:
            self.close()
            self._start()
            seconds += _STARTUP_SECONDS  # a fresh interpreter imports numpy and the runtimes first
        self._stderr_mark = self._stderr.seek(0, os.SEEK_END)
        try:
            self._conn.send(request)
            if not self._conn.poll(seconds):
                raise self._timed_out(stage, seconds)
            reply = self._conn.recv()
        except (EOFError, OSError):
            raise self._crashed(stage) from None
        if reply[0] == "error":
            name, runtime = self._artifact
            raise _rebuild(*reply[1:], where=f"{name}: {runtime} failed while {stage}")
        return reply[1]

    def _timed_out(self, stage: str, seconds: float) -> RuntimeTimeoutError:
        """Kill the busy child; the next call starts a new one."""
        self._process.kill()
        self._process.wait()
        self.close()
        name, runtime = self._artifact
        return RuntimeTimeoutError(name, runtime, stage, seconds)

    def _crashed(self, stage: str) -> RuntimeCrashError:
        """The error for a child that died; the next call starts a new one."""
        code = self._process.wait()
        self._stderr.seek(self._stderr_mark)
        lines = [line.strip() for line in self._stderr.read().decode(errors="replace").splitlines()]
        detail = next((line for line in reversed(lines) if line and not line.startswith(_NOT_THE_CAUSE)), "")
        self.close()
        name, runtime = self._artifact
        signal = -code if code < 0 else None
        return RuntimeCrashError(name, runtime, stage, signal, None if signal else code, detail[:200])


def _rebuild(cls: type | None, message: str, where: str) -> Exception:
    """The child's error: the same deploykit type when it takes a message, else the runtime's own exception as a
    RuntimeFailureError saying ``where`` (it fails that artifact, as a crash does)."""
    if cls is not None:
        try:
            return cls(message)
        except TypeError:
            pass
    return RuntimeFailureError(f"{where}: {message}")


_shared: RuntimeWorker | None = None
_shared_lock = threading.Lock()


def shared_worker() -> RuntimeWorker:
    """The process-wide worker :func:`validate` reuses across artifacts (stopped at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RuntimeWorker()
            atexit.register(_shared.close)
        return _shared


# -- the child side ----------------------------------------------------------------------------------------------


def _open(path: Path, threads: int | None, describe: bool):
    """Load ``path`` and run one input through it, so allocation happens under the "loading" stage."""
    runner = open_runner(path, threads)
    runner.predict(np.zeros((1, *runner.input_shape), dtype=np.float32))
    reference_accuracy = kind = None
    if runner.runtime == "onnxruntime":
        from deploykit.export.metadata import read_metadata

        meta = read_metadata(runner.session)
        reference_accuracy, kind = meta.reference_accuracy, (meta.task or {}).get("output")
    quantization = artifact_quantization(path) if describe else None
    return runner, OpenedArtifact(
        runner.format.value,
        runner.runtime,
        tuple(runner.input_shape),
        quantization,
        reference_accuracy,
        runner.output_name,
        runner.declared_outputs(),
        kind,
    )


def _measure(runner, x: np.ndarray, batch_sizes: tuple[int, ...], repeats: int) -> Measured:
    if runner is None:
        raise ModelLoadError("no artifact is open in the runtime worker")
    outputs = predict_batches(runner.predict, x)
    seconds = {}
    for batch in batch_sizes:
        xb = np.resize(x, (batch, *x.shape[1:])).astype(np.float32)
        seconds[batch] = median_seconds(lambda xb=xb: runner.predict(xb), repeats)
    return Measured(outputs, seconds)


def _serve(conn: Connection) -> None:
    """Answer requests until the parent closes its end."""
    runner = None
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        kind, args = request[0], request[1:]
        try:
            if kind == "open":
                runner = None
                runner, reply = _open(Path(args[0]), args[1], args[2])
            elif kind == "measure":
                reply = _measure(runner, *args)
            elif kind == "time":
                reply = time_files(*args)
            elif kind == "ping":
                reply = {"pid": os.getpid(), "tensorflow": "tensorflow" in sys.modules}
            else:
                raise ValueError(f"unknown request {kind!r}")
            conn.send(("ok", reply))
        except Exception as exc:  # every failure goes back to the parent, which raises it
            if isinstance(exc, DeployKitError):
                conn.send(("error", type(exc), str(exc)))
            else:  # a runtime's own exception (e.g. LiteRT's RuntimeError from allocate_tensors)
                conn.send(("error", None, one_line(exc)))


def _die_with(parent: int, main_thread: bool) -> None:
    """End this process when ``parent`` ends, even while a runtime call holds the main thread."""
    if main_thread and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(0.5)
        os._exit(1)

    if os.getppid() != parent:  # it died before we got here
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def main(fd: int, parent: int | None = None, main_thread: bool = False) -> None:
    """The child's entry point: serve on the inherited socket ``fd``; die with ``parent``."""
    from deploykit.log import keep_native_stderr

    if parent is not None:
        _die_with(parent, main_thread)
    keep_native_stderr()  # the parent reads this process's stderr, a crash's last words included
    _serve(Connection(fd))
