"""deploykit's output: the ``deploykit`` logger hierarchy, the CLI's levels, and quiet third-party code.

Library modules log with ``logging.getLogger(__name__)`` (a child of ``deploykit``); a program using
the API sees deploykit's warnings as it sees any library's (Python prints WARNING and above when
logging is not configured). Progress stays a callback the caller passes; the CLI's callback logs it at
INFO on ``deploykit.progress``.

The CLI maps ``--quiet`` / default / ``--verbose`` to WARNING / INFO / DEBUG (:func:`cli_logging`).

onnxruntime, LiteRT, the TFLite converter and TensorFlow print their own lines: some through Python
logging (onnxruntime's quantizer logs on the root logger), most from C++ straight to file descriptor 2,
where no Python setting reaches them. :func:`quiet_native` wraps those few calls: it points fd 2 at a
buffer and takes over the root logger's handlers for the duration of the call, then logs what it caught
at DEBUG on ``deploykit.native``, so ``--verbose`` still shows it and nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator

ROOT = "deploykit"
PROGRESS = logging.getLogger(f"{ROOT}.progress")
NATIVE = logging.getLogger(f"{ROOT}.native")

_T0 = time.monotonic()
_lock = threading.Lock()
_depth = 0
_passthrough = False  # see keep_native_stderr


#: The longest progress line written when stderr is not a terminal (a terminal: its width).
MAX_LINE = 240


class _CliFormatter(logging.Formatter):
    """``[  12.3s] message``: the seconds since the command started, then the line (a progress line fits the
    terminal's width: what a step says in full is in its report)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        elif record.levelno < logging.INFO:
            message = f"{record.name}: {message}"
        line = f"[{time.monotonic() - _T0:6.1f}s] {message}"
        return shorten(line, _width()) if record.levelno == logging.INFO else line


def shorten(line: str, width: int) -> str:
    """``line`` cut to ``width`` characters, ending in `` ...`` when cut."""
    return line if len(line) <= width else line[: max(0, width - 4)].rstrip() + " ..."


def _width() -> int:
    import shutil

    stream = _stderr()
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return max(60, shutil.get_terminal_size((MAX_LINE, 24)).columns) if tty else MAX_LINE


_saved_stderr = None  # a copy of fd 2 made by cli_logging: quiet_native's redirection does not swallow progress


def _stderr():
    """Where the CLI's lines go: ``sys.stderr`` (pytest's capsys swaps it), or the saved fd 2 behind the real one."""
    if _saved_stderr is not None and sys.stderr is sys.__stderr__:
        return _saved_stderr
    return sys.stderr


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (pytest's capsys swaps it), above a bar."""

    def __init__(self):
        super().__init__()
        self.setFormatter(_CliFormatter())

    @property
    def stream(self):
        return _stderr()

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ assigns it; the property wins
        pass

    def emit(self, record: logging.LogRecord) -> None:
        from deploykit import progress as live

        if live.bar_active():
            try:
                live.write(self.format(record))
            except Exception:  # noqa: BLE001  (logging's own rule: a broken handler never breaks the program)
                self.handleError(record)
            return
        super().emit(record)
        live.wrote_line()


@contextlib.contextmanager
def cli_logging(verbose: bool = False, quiet: bool = False) -> Iterator[None]:
    """Show deploykit's records on stderr for one command: WARNING with ``quiet``, DEBUG with
    ``verbose``, INFO (progress) otherwise; the logger's previous state is restored afterwards."""
    from deploykit import progress as live

    global _saved_stderr
    logger = logging.getLogger(ROOT)
    saved = (logger.level, logger.propagate, list(logger.handlers), _saved_stderr)
    logger.handlers = [_StderrHandler()]
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False  # a root handler (onnxruntime's logging.warning installs one) would print twice
    formatwarning = warnings.formatwarning
    if not verbose:  # a Python warning is one line, without the source path and line it came from
        warnings.formatwarning = _one_line_warning
    _saved_stderr = _dup_stderr()
    try:
        with contextlib.ExitStack() as stack:
            if not quiet:  # bars on a terminal, a heartbeat line otherwise (deploykit.progress)
                stack.enter_context(live.live(_stderr()))
            yield
    finally:
        if _saved_stderr is not None:
            with contextlib.suppress(Exception):
                _saved_stderr.close()
        logger.level, logger.propagate, logger.handlers, _saved_stderr = saved
        warnings.formatwarning = formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    text = " ".join(str(message).split())
    return f"warning: {category.__name__}: {text}\n"


def _dup_stderr():
    """A text stream on a copy of file descriptor 2 (None when fd 2 is unusable)."""
    try:
        return os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    except OSError:
        return None


def progress(message: str) -> None:
    """The CLI's progress callback: one INFO line on ``deploykit.progress`` (the heartbeat's "still ..." names it)."""
    from deploykit import progress as live

    live.step(message.strip())
    PROGRESS.info(message)


class _Collect(logging.Handler):
    """Stands in for the root logger's handlers: keeps third-party records' lines for later."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(ROOT):  # deploykit's own records have their handler already
            self.lines.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Run a third-party call without its stderr lines; they are logged at DEBUG on ``deploykit.native``.

    Catches what C++ code writes to file descriptor 2 and what Python code logs on the root logger
    (or writes to ``sys.stderr``) while the block runs. Exceptions propagate. Nested blocks are one
    block. fd 2 is per process: a thread writing to stderr during the block is caught too.
    """
    global _depth
    with _lock:
        _depth += 1
        outer = _depth == 1 and not _passthrough
    if not outer:
        try:
            yield
        finally:
            with _lock:
                _depth -= 1
        return
    root_handlers, collect = logging.root.handlers, _Collect()
    try:
        with tempfile.TemporaryFile() as buffer:
            with _stderr_to(buffer):
                logging.root.handlers = [collect]
                try:
                    yield
                finally:
                    logging.root.handlers = root_handlers
            buffer.seek(0)
            caught = buffer.read().decode("utf-8", errors="replace").splitlines()
    finally:
        with _lock:
            _depth -= 1
    for line in [*caught, *collect.lines]:  # logged once stderr is back, so they show with --verbose
        if line.strip():
            NATIVE.debug(line)


def keep_native_stderr() -> None:
    """Make :func:`quiet_native` a no-op in this process, for one whose stderr its parent already captures.

    The runtime worker (:mod:`deploykit.export.isolated`) needs the lines a native crash prints (glibc's
    ``double free detected``) on its real stderr: a buffer would die with the process.
    """
    global _passthrough
    _passthrough = True


@contextlib.contextmanager
def _stderr_to(buffer) -> Iterator[None]:
    """Point file descriptor 2 at ``buffer`` for the block (nothing to do when fd 2 is unusable)."""
    _flush_stderr()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        os.dup2(buffer.fileno(), 2)
        yield
    finally:
        _flush_stderr()
        os.dup2(saved, 2)
        os.close(saved)


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()
