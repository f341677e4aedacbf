"""The HTTP/1.1 connections of ``deploykit serve``: limits a client cannot get around by being slow or verbose.

uvicorn's httptools protocol with these additions, all applied while bytes are
parsed, before routing (kserve copies every request's headers into a dict, a
cost quadratic in their number, on the event loop):

- **header limits**: a request line plus headers over ``max_header_bytes``, or
  more than ``max_header_count`` headers, is answered 431 and the connection
  closed, as soon as the limit is crossed (an oversized value is never
  accumulated);
- **timeouts**: a request's headers must arrive within ``header_timeout`` of
  the connection (or of its first byte, on a kept-alive connection), its body
  within ``body_timeout`` of the headers (408, then closed; a connection that
  sent nothing is just closed); an idle kept-alive connection is closed after
  ``keep_alive_timeout`` (uvicorn's timer);
- **a connection cap**: at most :func:`connection_cap` connections are open,
  kept below the descriptor limit so that ``accept`` never fails; a connection
  arriving at the cap closes the connection that has waited longest for its
  client (unfinished headers or body, or idle); if every connection has a
  request being answered, the newcomer gets a 503;
- **shutdown**: connections waiting for their client are closed at once
  (a stalled upload cannot hold SIGTERM back); requests being answered finish.

Each refusal is counted (:data:`COUNTS`); the server logs the totals in one
line when it stops, and each event at DEBUG (``--verbose``).
"""

from __future__ import annotations

import json
import logging
import resource
from collections import Counter
from enum import Enum

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deploykit.serve.config import ServeConfig

#: Descriptors kept free for the process itself (model files, the event loop, logs, onnxruntime).
FD_RESERVE = 64
#: Refusals since start, by reason ("431 headers", "408 headers", "408 body", "idle timeout", "evicted", "503 full").
COUNTS: Counter = Counter()

log = logging.getLogger("kserve.deploykit")


class Phase(Enum):
    """Where a connection is in its current request."""

    IDLE = "idle"  # connected or kept alive; nothing of a request yet
    HEAD = "head"  # request line and headers arriving
    BODY = "body"  # headers complete, body arriving
    BUSY = "busy"  # request complete, being answered


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to stay ``FD_RESERVE`` below the soft RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(4, min(max_connections, soft - FD_RESERVE))


def protocol_class(config: ServeConfig) -> type:
    """The uvicorn ``http`` protocol class enforcing ``config``'s limits."""
    return type(
        "DeployKitHttpProtocol",
        (GuardedHttpProtocol,),
        {"limits": config, "cap": connection_cap(config.max_connections)},
    )


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, timeouts, a connection cap and a quick shutdown."""

    limits: ServeConfig
    cap: int

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phase = Phase.IDLE
        self.since = 0.0  # when the connection entered its phase: the longest waiting is closed first
        self.head_bytes = 0  # request line + headers parsed so far
        self.pending = 0  # bytes received since the current request's head began
        self.header_count = 0
        self.refusal: tuple[int, str, str] | None = None  # set by a parser callback that stops the parser
        self.timer = None

    # connection events

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._enter(Phase.IDLE)
        self._arm(self.limits.header_timeout)
        if len(self.connections) > self.cap:
            self._make_room()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """Close at once unless a request is being answered (that one finishes first)."""
        if self.phase is Phase.BUSY:
            super().shutdown()
        else:
            self._disarm()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            return self._refuse(*(self.refusal or (400, "400 malformed", "invalid HTTP request")))
        if self.phase in (Phase.IDLE, Phase.HEAD):  # the head is still incomplete: httptools holds what it read
            self.pending += len(data)
            if self.pending > self.limits.max_header_bytes:
                self._refuse(*self._too_large())

    # parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_count = self.head_bytes = 0
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request behind one being answered: the connection stays BUSY
        if self.timer is None:  # a kept-alive connection: the headers' clock starts with the first byte
            self._arm(self.limits.header_timeout)
        self._enter(Phase.HEAD)

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)
        super().on_header(name, value)

    def _count(self, size: int, headers: int) -> None:
        """Add to the request head; over a limit, stop the parser (``data_received`` answers 431)."""
        self.head_bytes += size
        self.header_count += headers
        if self.header_count > self.limits.max_header_count:
            self.refusal = (431, "431 headers", f"more than {self.limits.max_header_count} request headers")
        elif self.head_bytes > self.limits.max_header_bytes:
            self.refusal = self._too_large()
        if self.refusal:
            raise OverflowError(self.refusal[2])

    def _too_large(self) -> tuple[int, str, str]:
        return 431, "431 headers", f"request line and headers exceed the limit of {self.limits.max_header_bytes} bytes"

    def on_headers_complete(self) -> None:
        self.pending = 0
        if self.phase is Phase.HEAD:
            self._enter(Phase.BODY)
            self._arm(self.limits.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._enter(Phase.BUSY)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if not self.pipeline:
            self._enter(Phase.IDLE)
        super().on_response_complete()

    # helpers

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self.since = self.loop.time()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.phase is Phase.BODY:
            self._refuse(408, "408 body", f"request body not received within {self.limits.body_timeout:g} s")
        elif self.phase is Phase.HEAD or self.pending:
            self._refuse(408, "408 headers", f"request headers not received within {self.limits.header_timeout:g} s")
        elif self.phase is Phase.IDLE:
            self._close("idle timeout")

    def _make_room(self) -> None:
        waiting = [c for c in self.connections if c is not self and getattr(c, "phase", Phase.BUSY) is not Phase.BUSY]
        if not waiting:
            return self._refuse(503, "503 full", f"the server has {self.cap} connections open; retry later")
        min(waiting, key=lambda c: c.since)._close("evicted")

    def _close(self, reason: str) -> None:
        COUNTS[reason] += 1
        log.debug("closed a connection from %s: %s", _peer(self.client), reason)
        self._disarm()
        self.transport.close()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``{"error": message}`` with ``status`` and close the connection."""
        COUNTS[reason] += 1
        log.debug("%s from %s: %s", status, _peer(self.client), message)
        self._disarm()
        self.phase = Phase.BUSY
        if not self.transport.is_closing():
            body = json.dumps({"error": message}).encode()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            ).encode()
            self.transport.write(head + body)
            self.transport.close()


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def _peer(client) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def summary() -> str:
    """The refusals since start, in one line (empty when there were none)."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(COUNTS.items()))
