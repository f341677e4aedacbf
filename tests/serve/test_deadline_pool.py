"""The inference pool of ``deploykit serve`` (deploykit.serve.deadline), without a server: the deadline, the
priority of a long call's thread, and stopping every running call at shutdown."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest

from deploykit.onnx.sessions import onnx_session
from deploykit.serve.deadline import (
    DEMOTED_NICE,
    THREADS_PER_MODEL,
    DeadlineSession,
    InferencePool,
    RequestTimeout,
    stop_all,
)
from tests.security import hostile_onnx


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_a_long_call_yields_the_cpu_and_its_thread_is_put_back():
    pool = InferencePool("spin", timeout=5.0)
    seen = {}

    def spin():
        tid = threading.get_native_id()
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            seen.setdefault("nice", set()).add(_nice(tid))
        return tid

    async def twice():  # the second call lets the loop run the replacement a retired thread asks for
        first = await pool.run(spin)
        await asyncio.sleep(0.1)
        return first

    tid = asyncio.run(twice())
    normal = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert DEMOTED_NICE in seen["nice"] and normal in seen["nice"]  # normal first, lowered after 0.25 s
    try:
        assert _nice(tid) == normal  # put back (allowed as root, or with RLIMIT_NICE)
    except ProcessLookupError:  # not allowed: the thread retired and a fresh one replaced it
        assert pool._started == THREADS_PER_MODEL + 1


def test_the_deadline_stops_an_onnxruntime_call(tmp_path):
    session = DeadlineSession(onnx_session(hostile_onnx.slow_loop_model(tmp_path)))
    pool = InferencePool("slow", timeout=1.0)
    ones = {"input": np.ones((1, 4), np.float32)}

    async def go():
        return await pool.run(session.run, None, ones)

    t0 = time.monotonic()
    with pytest.raises(RequestTimeout, match="request timeout of 1 s"):
        asyncio.run(go())
    assert time.monotonic() - t0 < 2
    assert stop_all(5.0) == 0  # the terminated call returned: no thread is left inside onnxruntime
