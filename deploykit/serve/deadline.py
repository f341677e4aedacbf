"""Inference off the event loop, with a deadline per request that stops the onnxruntime call itself.

A request to a slow model (a ``Loop`` that never ends, or just a heavy
graph) must not stop the server answering health checks and other models, and
SIGTERM must still stop the server within its grace period. So every model
runs its calls in its own :class:`InferencePool` (a few daemon threads: one slow
model cannot take the threads of another), and the event loop only awaits the
result, for at most the server's ``request_timeout``. When the deadline passes
the client gets a 504 naming the timeout, and the call is stopped where it is
with onnxruntime's ``RunOptions.terminate`` (set from the loop's thread; every
``session.run`` of the request shares one ``RunOptions``). A request still
queued when its deadline passes never runs.

Until its deadline a long call still takes a CPU the other models' calls and
the event loop need: a call that has run :data:`SLOW_CALL_SECONDS` has its
thread's nice value raised to :data:`DEMOTED_NICE` (Linux: per thread), so it
gets what the others leave. The thread is put back afterwards where the OS
allows it, else it is retired and a fresh thread replaces it.

:class:`DeadlineSession` wraps a model's session so that its ``run`` picks up the
current request's ``RunOptions``: the models' code keeps calling
``session.run(outputs, feed)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from deploykit.errors import DeployKitError

#: Threads per model: one slow request leaves the model another, and a model never takes another's.
THREADS_PER_MODEL = 2
#: A call running this long yields the CPU to the others (its thread's nice value is raised).
SLOW_CALL_SECONDS = 0.25
DEMOTED_NICE = 19

_current = threading.local()
_pools: list[InferencePool] = []  # every pool of the process, stopped together at shutdown


class RequestTimeout(DeployKitError):
    """A request that did not finish within the server's request timeout (answered with 504)."""


def run_options():
    """A fresh ``RunOptions`` that logs nothing (a terminated call is reported to the client, not on stderr)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


class DeadlineSession:
    """An onnxruntime session whose ``run`` uses the ``RunOptions`` of the request its thread is running."""

    def __init__(self, session):
        self._session = session

    def run(self, output_names, feed, run_options=None):
        return self._session.run(output_names, feed, run_options or getattr(_current, "options", None))

    def __getattr__(self, name):
        return getattr(self._session, name)


@dataclass(eq=False)
class _Job:
    fn: Callable
    args: tuple
    options: object
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: bool = False
    started: float = field(default=0.0)
    tid: int = 0  # the native id of the thread running it
    done: bool = False
    demoted: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class InferencePool:
    """A model's inference threads; :meth:`run` awaits a call for at most ``timeout`` seconds."""

    def __init__(self, name: str, timeout: float, threads: int = THREADS_PER_MODEL):
        self.name = name
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._running: set[_Job] = set()
        self._started = 0
        _pools.append(self)
        for _ in range(threads):
            self._spawn()

    def _spawn(self) -> None:
        """A new worker thread (called from a thread at normal priority: it inherits the caller's nice value)."""
        self._started += 1
        threading.Thread(target=self._work, name=f"infer-{self.name}-{self._started}", daemon=True).start()

    async def run(self, fn: Callable, *args):
        """``fn(*args)`` in one of the pool's threads, stopped and refused with RequestTimeout after the deadline."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, args, run_options(), loop, loop.create_future())
        self._jobs.put(job)
        demote = loop.call_later(SLOW_CALL_SECONDS, _demote, job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.timeout)
        except TimeoutError:
            job.cancelled = True
            job.options.terminate = True  # onnxruntime stops the call between (and inside looping) kernels
            where = "while it ran" if job.started else "before a thread was free to run it"
            raise RequestTimeout(
                f"model '{self.name}' did not answer within the request timeout of "
                f"{self.timeout:g} s ({where}); the call was stopped"
            ) from None
        except asyncio.CancelledError:  # the client went away: stop the call too
            job.cancelled = True
            job.options.terminate = True
            raise
        finally:
            demote.cancel()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job.cancelled:
                continue
            job.started, job.tid = time.monotonic(), threading.get_native_id()
            self._running.add(job)
            _current.options = job.options
            try:
                value, error = job.fn(*job.args), None
            except BaseException as exc:  # handed to the awaiting request, which raises it
                value, error = None, exc
            finally:
                _current.options = None
                self._running.discard(job)
            with job.lock:
                job.done = True
            if not job.cancelled:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this result
                    job.loop.call_soon_threadsafe(_settle, job.future, value, error)
            if job.demoted and not _restore(job.tid):  # cannot lower the nice value again: retire this thread
                with contextlib.suppress(RuntimeError):
                    job.loop.call_soon_threadsafe(self._spawn)
                return


def stop_all(seconds: float) -> int:
    """Stop every running call (``RunOptions.terminate``) and wait up to ``seconds`` for them to return: the
    calls still running then (an operator that ignores the flag). The process must not exit while a thread is
    inside onnxruntime: its static destructors would abort it ("terminate called without an active exception")."""
    running = [job for pool in _pools for job in list(pool._running)]
    for job in running:
        job.cancelled = True
        job.options.terminate = True
    end = time.monotonic() + seconds
    while any(pool._running for pool in _pools) and time.monotonic() < end:
        time.sleep(0.01)
    return sum(len(pool._running) for pool in _pools)


def _demote(job: _Job) -> None:
    """Raise the nice value of the thread running a call that has run SLOW_CALL_SECONDS (Linux: per thread)."""
    if job.cancelled or job.future.done():
        return
    if not job.tid:  # still queued behind another call: look again later
        job.loop.call_later(SLOW_CALL_SECONDS, _demote, job)
        return
    with job.lock:
        if job.done or not hasattr(os, "setpriority"):
            return
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, job.tid, DEMOTED_NICE)
            job.demoted = True


def _restore(tid: int) -> bool:
    """Put a demoted thread back to the process's nice value; False where the OS does not allow it."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, os.getpid()))
        return True
    except OSError:
        return False


def _settle(future: asyncio.Future, value, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
