"""Progress people expect from a long command: a bar with the time left on a terminal, a heartbeat line otherwise.

A long step (fine-tuning epochs, the sensitivity scan, the int8 tries, the ensemble's members) opens a
:func:`task` with its total and updates it. The CLI switches this on (:func:`live`); through the API nothing
is drawn and :func:`task` costs nothing. With the progress stream a terminal, a task is a ``tqdm`` bar (its
estimate of the time left included); otherwise, and on a terminal during a step without a bar, a heartbeat
thread writes one plain line whenever nothing was written for :data:`HEARTBEAT_SECONDS`: what runs, how far
it is and, for a task, the time left. No TensorFlow import here (the server and ``--help`` stay light); a Keras
callback drawing a task is :func:`deploykit.sparsity.tuning.fine_tune`'s.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

#: The longest a command stays silent (the issue's "at least one line every 30 s").
HEARTBEAT_SECONDS = 30.0

_log = logging.getLogger("deploykit.progress")


@dataclass
class _State:
    """What the heartbeat reads: the last line written, the step running and the open task."""

    stream: TextIO | None = None  # set while live
    bars: bool = False  # the stream is a terminal: tasks are tqdm bars
    last_line: float = field(default_factory=time.monotonic)
    step: str = ""
    step_start: float = field(default_factory=time.monotonic)
    task: Task | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_state = _State()


def enabled() -> bool:
    return _state.stream is not None


def bar_active() -> bool:
    """A tqdm bar is on screen: a log line must be written above it (``tqdm.write``)."""
    return _state.task is not None and _state.task.bar is not None


def wrote_line() -> None:
    """A line was written (the CLI's log handler calls this): the heartbeat's clock starts again."""
    _state.last_line = time.monotonic()


def step(name: str) -> None:
    """What runs now, for the heartbeat's line: the last progress line (the CLI's callback sets it) or a step."""
    _state.step, _state.step_start = name, time.monotonic()


def write(line: str) -> None:
    """One line on the progress stream, above a bar if one is drawn."""
    stream = _state.stream
    if stream is None:
        return
    if bar_active():
        from tqdm import tqdm

        tqdm.write(line, file=stream)
    else:
        stream.write(line + "\n")
        stream.flush()
    wrote_line()


class Task:
    """A long piece of work with a known total: a bar on a terminal, the heartbeat's figures elsewhere."""

    def __init__(self, desc: str, total: int, unit: str):
        self.desc, self.total, self.unit, self.n = desc, max(1, int(total)), unit, 0
        self.start = time.monotonic()
        self.bar: Any = None
        self._outer = _state.task
        if _state.stream is not None:
            if _state.bars:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=self.total,
                    desc=desc,
                    unit=f" {unit}" if unit else "it",
                    file=_state.stream,
                    leave=False,
                    dynamic_ncols=True,
                    mininterval=0.5,
                )
            _state.task = self

    def update(self, n: int = 1) -> None:
        self.n = min(self.total, self.n + n)
        if self.bar is not None:
            self.bar.update(n)
            wrote_line()

    def eta(self) -> float | None:
        """Seconds left at the pace so far (None before the first unit is done)."""
        if self.n <= 0:
            return None
        return (time.monotonic() - self.start) / self.n * (self.total - self.n)

    def describe(self) -> str:
        left = self.eta()
        pace = f", ~{clock(left)} left" if left is not None else f", starting ({clock(time.monotonic() - self.start)})"
        return f"{self.desc}: {self.n}/{self.total} {self.unit}{pace}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if _state.task is self:
            _state.task = self._outer

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def task(desc: str, total: int, unit: str = "") -> Task:
    """Open a task (use as a context manager); a no-op outside :func:`live`."""
    return Task(desc, total, unit)


def clock(seconds: float) -> str:
    """``42 s`` / ``3.5 min``: a duration as people read it."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def heartbeat_line(now: float | None = None) -> str:
    """What the heartbeat says: the open task's figures, else the step and how long it has run."""
    now = time.monotonic() if now is None else now
    if _state.task is not None:
        return f"  ... {_state.task.describe()}"
    what = _state.step or "starting"
    what = what if len(what) <= 80 else what[:76].rstrip() + " ..."
    return f"  ... still {what} ({clock(now - _state.step_start)})"


def _beat(stop: threading.Event, period: float) -> None:
    while not stop.wait(min(1.0, period / 4)):
        if time.monotonic() - _state.last_line >= period:
            with contextlib.suppress(Exception):  # a closed stream must not kill the command
                _log.info(heartbeat_line().strip())
            wrote_line()


@contextlib.contextmanager
def live(stream: TextIO, period: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Draw tasks on ``stream`` (bars if it is a terminal) and keep a heartbeat for the block (the CLI's command)."""
    saved = (_state.stream, _state.bars)
    _state.stream, _state.bars = stream, _isatty(stream)
    wrote_line()
    stop = threading.Event()
    thread = threading.Thread(target=_beat, args=(stop, period), name="deploykit-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
        while _state.task is not None:
            _state.task.close()
        _state.stream, _state.bars = saved


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
