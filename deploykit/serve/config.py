"""``ServeConfig``: how ``deploykit serve`` listens and what it accepts; validated on construction."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from deploykit.configs import Config
from deploykit.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_SAMPLES = 30
DEFAULT_MAX_ROWS = 1024
DEFAULT_MAX_SAMPLES = 1000
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")


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

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError(f"host must be a host name or IP address, got {self.host!r}")
        if not self.host.replace("-", "").replace(".", "").isalnum():
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise ConfigError(f"host must be a host name or IP address, got {self.host!r}") from None
        _check_int("port", self.port, 1, 65535)
        _check_int("max_samples", self.max_samples, 1)
        _check_int("samples", self.samples, 1, self.max_samples)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        _check_int("max_rows", self.max_rows, 1)
        _check_int("max_body_bytes", self.max_body_bytes, 1024)
