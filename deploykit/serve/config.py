"""``ServeConfig``: how ``deploykit serve`` listens and what it accepts; validated on construction."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from deploykit.configs import Config, integer, number, text
from deploykit.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_SAMPLES = 30
DEFAULT_MAX_ROWS = 1024
DEFAULT_MAX_SAMPLES = 1000
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_NETWORK_ROWS = 256 * 1024  # rows x samples: the batch onnxruntime runs for one request
DEFAULT_MAX_RESPONSE_VALUES = 2_000_000  # numbers in one response (about 20-40 MB of JSON)
DEFAULT_MAX_HEADER_COUNT = 100  # as Apache's LimitRequestFields
DEFAULT_MAX_HEADER_BYTES = 32 * 1024  # request line + headers (nginx: 4 x 8 KiB buffers)
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds from connecting (or the first byte of a request) to its last header
DEFAULT_BODY_TIMEOUT = 30.0  # seconds from the last header to the last byte of the body
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0  # seconds an idle keep-alive connection stays open (uvicorn's default)
#: Seconds per inference: above the slowest call the default limits allow (1024 rows x 250 MC samples took
#: over 10 s on 2 cores shared with 8 jobs), below the 30 s SIGTERM grace, so a stuck call never outlives it.
DEFAULT_REQUEST_TIMEOUT = 25.0
DEFAULT_MAX_CONNECTIONS = 512  # also kept below the process's file descriptor limit


def _seconds(name: str, value: Any) -> float:
    """A timeout: a tenth of a second to an hour."""
    return number(name, value, 0.1, 3600)  # type: ignore[return-value]


@dataclass(frozen=True)
class ServeConfig(Config):
    """Listening address, onnxruntime threads and the request limits of the server."""

    host: str = DEFAULT_HOST  # loopback only unless told otherwise
    port: int = DEFAULT_PORT
    samples: int = DEFAULT_SAMPLES  # MC models: T when a request does not set `samples`
    threads: int | None = None  # onnxruntime intra-op threads per model (None: onnxruntime's default)
    max_rows: int = DEFAULT_MAX_ROWS  # instances per request
    max_samples: int = DEFAULT_MAX_SAMPLES  # largest `samples` a request may ask for (also capped by each model)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # request body size limit
    max_network_rows: int = DEFAULT_MAX_NETWORK_ROWS  # rows x samples per request (MC models)
    max_response_values: int = DEFAULT_MAX_RESPONSE_VALUES  # numbers per response, over the outputs sent
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # open connections; the oldest waiting one makes room
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT  # an inference still running then is stopped (504)

    def __post_init__(self) -> None:
        text("host", self.host)
        if not self.host.replace("-", "").replace(".", "").isalnum():
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise ConfigError(f"host must be a host name or IP address, got {self.host!r}") from None
        integer("port", self.port, 1, 65535)
        integer("max_samples", self.max_samples, 1)
        integer("samples", self.samples, 1, self.max_samples)
        integer("threads", self.threads, 1, optional=True)
        integer("max_rows", self.max_rows, 1)
        integer("max_body_bytes", self.max_body_bytes, 1024)
        integer("max_network_rows", self.max_network_rows, 1)
        integer("max_response_values", self.max_response_values, 1)
        integer("max_header_count", self.max_header_count, 8)
        integer("max_header_bytes", self.max_header_bytes, 1024)
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout", "request_timeout"):
            object.__setattr__(self, name, _seconds(name, getattr(self, name)))
        integer("max_connections", self.max_connections, 4)
