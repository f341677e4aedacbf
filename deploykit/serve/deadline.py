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

:class:`DeadlineSession` wraps a model's session so that its ``run`` picks up the
current request's ``RunOptions``: the models' code keeps calling
``session.run(outputs, feed)``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from deploykit.errors import DeployKitError

#: Threads per model: one slow request leaves the model another, and a model never takes another's.
THREADS_PER_MODEL = 2

_current = threading.local()


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


class InferencePool:
    """A model's inference threads; :meth:`run` awaits a call for at most ``timeout`` seconds."""

    def __init__(self, name: str, timeout: float, threads: int = THREADS_PER_MODEL):
        self.name = name
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._work, name=f"infer-{name}-{i}", daemon=True).start()

    async def run(self, fn: Callable, *args):
        """``fn(*args)`` in one of the pool's threads, stopped and refused with RequestTimeout after the deadline."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, args, run_options(), loop, loop.create_future())
        self._jobs.put(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.timeout)
        except TimeoutError:
            job.cancelled = True
            job.options.terminate = True  # onnxruntime stops the call between (and inside looping) kernels
            where = "while it ran" if job.started else "before a thread was free to run it"
            raise RequestTimeout(f"model '{self.name}' did not answer within the request timeout of "
                                 f"{self.timeout:g} s ({where}); the call was stopped") from None
        except asyncio.CancelledError:  # the client went away: stop the call too
            job.cancelled = True
            job.options.terminate = True
            raise

    def call(self, fn: Callable, *args):
        """``fn(*args)`` from a thread that is not the event loop's (start-up), under the same deadline."""
        result: dict = {}

        async def once():
            result["value"] = await self.run(fn, *args)

        asyncio.run(once())
        return result["value"]

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job.cancelled:
                continue
            job.started = time.monotonic()
            _current.options = job.options
            try:
                value, error = job.fn(*job.args), None
            except BaseException as exc:  # handed to the awaiting request, which raises it
                value, error = None, exc
            finally:
                _current.options = None
            if not job.cancelled:
                try:
                    job.loop.call_soon_threadsafe(_settle, job.future, value, error)
                except RuntimeError:  # the loop is closed: nobody waits for this result
                    pass


def _settle(future: asyncio.Future, value, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)

