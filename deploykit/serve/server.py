"""``deploykit serve``: kserve's ModelServer on the Open Inference Protocol (v2) and v1 REST.

Built from kserve's parts (model registry, data plane, REST server with its v1
and v2 routes and Prometheus ``/metrics``) with these changes:

- it binds ``config.host`` (kserve binds 0.0.0.0) and runs no gRPC server;
- a request that kserve cannot decode is a 400 naming the problem, not a 500;
- a body over ``config.max_body_bytes`` is a 413 before it is read;
- the connections have header limits, timeouts and a cap (:mod:`deploykit.serve.connections`);
- v2 infer, model metadata, model config and the repository index are deploykit's
  routes (:mod:`deploykit.serve.routes`);
- error bodies are ``{"error": "<one line>"}``, logged as one line (no traceback),
  with client-given names bounded and escaped;
- the model repository is read-only: only the models given at start are served;
  a model that cannot be served is skipped with a warning;
- kserve's and uvicorn's own lines are shown with ``--verbose`` only;
- every inference runs off the event loop under ``--request-timeout`` (:mod:`deploykit.serve.deadline`):
  past it the call is stopped and the client gets a 504 (nothing runs at start: a seeded MC model's
  first call is the first client's);
- SIGTERM / SIGINT / SIGHUP stop accepting connections, close those waiting for their
  client, finish the requests in flight (up to ``GRACE_SECONDS``), log one line
  and return normally.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import orjson

from deploykit.errors import DeployKitError, ModelLoadError
from deploykit.serve import connections, limits
from deploykit.serve._kserve import (
    FASTAPI_APP_IMPORT_STRING,
    DataPlane,
    InferRequest,
    InvalidInput,
    ModelNotFound,
    ModelRepositoryExtension,
    ModelServer,
    RESTServer,
)
from deploykit.serve.config import ServeConfig
from deploykit.serve.deadline import RequestTimeout, stop_all
from deploykit.serve.discover import discover_models
from deploykit.serve.models import OnnxModel, open_model
from deploykit.serve.routes import register_routes

GRACE_SECONDS = 30
STOP_SECONDS = 5  # after the grace period: how long stopped inference calls get to return
_HEADER_LENGTH = "inference-header-content-length"

log = logging.getLogger("kserve.deploykit")  # kserve configures the "kserve" loggers


def load_models(models: dict[str, Path], config: ServeConfig, warn=None) -> list[OnnxModel]:
    """Open every model in onnxruntime, before the server accepts a request.

    A model that cannot be served (e.g. an ONNX file with initializer-backed inputs, common from tf2onnx)
    is skipped: ``warn`` gets one line naming it and why. If none can be served, the first error is raised.
    """
    loaded, errors = [], []
    for name, path in models.items():
        try:
            loaded.append(open_model(name, path, config))
        except DeployKitError as exc:
            errors.append((name, exc))
        except Exception as exc:  # onnxruntime's own errors on a file it loaded but cannot run
            errors.append((name, ModelLoadError(f"{path}: cannot be served ({type(exc).__name__}: {exc})")))
    if not loaded and errors:
        raise errors[0][1]
    for name, exc in errors:
        (warn or _warn)(f"warning: skipping model {name!r}, it cannot be served: {exc}")
    return loaded


def _warn(line: str) -> None:
    print(line, file=sys.stderr)


class _DataPlane(DataPlane):
    """kserve's data plane, but a body it cannot decode is the client's error (400), never a 500.

    A v2 body without the binary extension's ``Inference-Header-Content-Length``
    header, and any v1 body, is read as JSON whatever its content type (as
    Triton does; ``curl -d`` sends a form content type). The JSON of a v2
    body read from bytes is checked (:func:`limits.check_v2_header`) before
    kserve decodes it.
    """

    def decode(self, body, headers, protocol_version="v1", model_name=None):
        try:
            if isinstance(body, bytes) and protocol_version == "v2":
                return _v2_from_bytes(body, headers or {}, model_name), {}
            decoded, attributes = super().decode(body, headers, protocol_version, model_name)
            if isinstance(decoded, bytes):  # a v1 body sent with another content type: JSON all the same
                decoded = orjson.loads(decoded)
            return decoded, attributes
        except InvalidInput:
            raise
        except limits.RequestError as exc:
            raise InvalidInput(str(exc)) from None
        except orjson.JSONDecodeError as exc:
            hint = " (NaN and Infinity are not JSON numbers)" if isinstance(body, bytes) and _non_finite(body) else ""
            raise InvalidInput(f"malformed JSON: {exc}{hint}") from None
        except Exception as exc:  # whatever else the decoder trips on, the body is at fault
            text = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise InvalidInput(f"malformed inference request: {type(exc).__name__}: {text}") from None


def _non_finite(body: bytes) -> bool:
    return b"NaN" in body or b"Infinity" in body


def _v2_from_bytes(body: bytes, headers: dict, model_name: str) -> InferRequest:
    """A v2 request from raw bytes: JSON, then the binary tensors (the JSON's length in the header)."""
    declared = headers.get(_HEADER_LENGTH)
    length = len(body) if declared is None else int(declared) if declared.isdigit() else -1
    if not 0 <= length <= len(body):
        raise limits.RequestError(
            f"header Inference-Header-Content-Length must be an integer between 0 and "
            f"{len(body)} (the body's size), got {declared!r}"
        )
    limits.check_v2_header(orjson.loads(body[:length]), len(body) - length)
    return InferRequest.from_bytes(body, length, model_name)


class _ReadOnlyRepository(ModelRepositoryExtension):
    """The models are the ones given at start: no request loads or unloads one."""

    async def load(self, model_name: str) -> None:
        raise InvalidInput("this server's models are fixed at start; the repository cannot load models")

    async def unload(self, model_name: str) -> None:
        raise InvalidInput("this server's models are fixed at start; the repository cannot unload models")


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413, declared or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: str) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse

        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"error": self._message(declared.decode())}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message(f"more than {self.max_bytes}"))
            return message

        return await self.app(scope, limited_receive, send)


def _error_handler(status: int | None):
    """An exception handler answering ``{"error": message}`` and logging one line."""
    from starlette.responses import JSONResponse

    async def handler(request, exc):
        code = status or getattr(exc, "status_code", 400)
        message = _one_line(_message(exc))
        log.info("%s %s -> %s: %s", request.method, limits.shown(request.url.path, 200), code, message)
        return JSONResponse({"error": message}, status_code=code)

    return handler


async def _not_found(request, exc):
    """404 naming the model asked for, bounded and escaped (kserve's message echoes it whole)."""
    from starlette.responses import JSONResponse

    name, version = request.path_params.get("model_name", ""), request.path_params.get("model_version")
    what = f"model {limits.shown(name)}" + (f" version {limits.shown(version)}" if version else "")
    message = f"{what} does not exist" if name else _one_line(str(exc))
    log.info("%s %s -> 404: %s", request.method, limits.shown(request.url.path, 200), message)
    return JSONResponse({"error": message}, status_code=404)


async def _client_gone(request, exc):
    """The client went away (or a timeout closed its connection) before its body arrived: nothing to answer."""
    from starlette.responses import Response

    return Response(status_code=400)


def _one_line(message: str, limit: int = 1000) -> str:
    """An error message as sent and logged: control characters escaped, at most ``limit`` characters."""
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message[:limit])
    return escaped + ("..." if len(message) > limit else "")


def _message(exc) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # FastAPI's RequestValidationError: the first problem, with where it is
        first = (exc.errors() or [{}])[0]
        loc = first.get("loc", ())
        if first.get("type") == "json_invalid":
            return f"malformed JSON at character {loc[-1] if loc else '?'}: {first.get('ctx', {}).get('error', '')}"
        return f"invalid request: {'.'.join(str(p) for p in loc)}: {first.get('msg', 'invalid value')}"
    message = str(getattr(exc, "detail", None) or exc)
    cause = exc.__cause__  # FastAPI's "There was an error parsing the body" hides why
    return f"{message}: {type(cause).__name__}: {str(cause)[:200]}" if cause else message


class _RESTServer(RESTServer):
    """kserve's REST server on ``config.host``, with deploykit's connections, routes, limits and error handlers."""

    def __init__(self, dataplane, repository, config: ServeConfig):
        super().__init__(FASTAPI_APP_IMPORT_STRING, dataplane, repository, config.port, grace_period=GRACE_SECONDS)
        self.config.host = config.host
        self.config.http = connections.protocol_class(config)
        self.config.timeout_keep_alive = config.keep_alive_timeout
        self.max_body_bytes = config.max_body_bytes

    def _register_endpoints(self, app) -> None:
        register_routes(app, self.dataplane)  # first: they take precedence over kserve's
        super()._register_endpoints(app)

    def _add_middlewares(self, app) -> None:
        super()._add_middlewares(app)
        app.add_middleware(BodySizeLimit, max_bytes=self.max_body_bytes)

    def _add_exception_handlers(self, app) -> None:
        from fastapi.exceptions import RequestValidationError
        from starlette.exceptions import HTTPException

        super()._add_exception_handlers(app)
        from starlette.requests import ClientDisconnect

        handlers = {
            InvalidInput: _error_handler(400),
            ModelNotFound: _not_found,
            RequestTimeout: _error_handler(504),
            ClientDisconnect: _client_gone,
            NotImplementedError: _error_handler(400),  # kserve: "Model versioning not supported yet."
            RequestValidationError: _error_handler(422),
            HTTPException: _error_handler(None),
        }
        for exc_type, handler in handlers.items():
            app.add_exception_handler(exc_type, handler)


class DeployKitModelServer(ModelServer):
    """kserve's ModelServer, REST only, on ``config.host``, with the limits and handlers above."""

    def __init__(self, config: ServeConfig, verbose: bool = False):
        super().__init__(
            http_port=config.port,
            enable_grpc=False,
            workers=1,
            enable_docs_url=False,
            enable_latency_logging=verbose,
            grace_period=GRACE_SECONDS,
        )
        self.config = config
        self.verbose = verbose
        self.dataplane = _DataPlane(model_registry=self.registered_models)
        self.model_repository_extension = _ReadOnlyRepository(model_registry=self.registered_models)

    def start(self, models: list[OnnxModel]) -> None:
        """Serve until SIGTERM / SIGINT; requests in flight are finished first."""
        from fastapi.exceptions import FastAPIDeprecationWarning

        quiet = logging.INFO if self.verbose else logging.WARNING
        for name in ("kserve", "uvicorn.error", "uvicorn.access", "kserve.trace"):  # foreign lines: --verbose only
            logging.getLogger(name).setLevel(quiet)
        log.setLevel(logging.DEBUG if self.verbose else logging.INFO)
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = _RESTServer(self.dataplane, self.model_repository_extension, self.config)
        warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)  # kserve's v1 route uses ORJSONResponse
        import uvicorn.server

        if signal.SIGHUP not in uvicorn.server.HANDLED_SIGNALS:  # a closed terminal drains like SIGTERM
            uvicorn.server.HANDLED_SIGNALS = (*uvicorn.server.HANDLED_SIGNALS, signal.SIGHUP)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # uvicorn handles them while serving, then re-raises
            signal.signal(sig, lambda *_: None)
        try:
            self._rest_server.run()
        except SystemExit as exc:  # uvicorn logs why it could not start (address in use...) and exits
            if exc.code:
                raise DeployKitError(
                    f"cannot listen on {self.config.host}:{self.config.port} (see the error above)"
                ) from None
        served = self._rest_server._server.server_state.total_requests
        refused = connections.summary()
        stuck = stop_all(STOP_SECONDS)
        log.info(
            "stopped after %d requests%s", served, f"; connections refused or closed: {refused}" if refused else ""
        )
        if stuck:  # a thread still inside onnxruntime would abort the interpreter's exit: leave at once
            log.warning("%d inference call(s) ignored the stop request; exiting without waiting for them", stuck)
            logging.shutdown()
            sys.stderr.flush()
            os._exit(0)


def serve(source: str | os.PathLike, config: ServeConfig | None = None, verbose: bool = False) -> None:
    """Serve the models of ``source`` (see :func:`discover_models`) until SIGTERM / SIGINT."""
    serve_models(discover_models(source), config, verbose)


def _inputs_text(model) -> str:
    """``input [64]``, or ``inputs source [28, 28], target_in [29, 43]`` for a model with one tensor per input."""
    if not model.several_inputs:
        return f"input {list(model.input_shape)}"
    return "inputs " + ", ".join(f"{t.name} {list(t.shape[1:])}" for t in model.several_inputs)


def serve_models(models: dict[str, Path], config: ServeConfig | None = None, verbose: bool = False) -> None:
    """Load the models (name -> ONNX file) and serve them until SIGTERM / SIGINT (``config``: defaults)."""
    config = config or ServeConfig()
    loaded = load_models(models, config)
    server = DeployKitModelServer(config, verbose=verbose)
    base = f"http://{config.host}:{config.port}"
    for model in loaded:
        print(
            f"model {model.name!r}: {model.summary()}, {_inputs_text(model)}, from {model.path}",
            file=sys.stderr,
        )
        print(f"  {base}/v2/models/{model.name}/infer  {base}/v1/models/{model.name}:predict", file=sys.stderr)
    print(f"serving on {base} (SIGTERM or Ctrl+C stops it)", file=sys.stderr)
    if not _is_loopback(config.host):
        print(
            f"warning: listening on {config.host}: anyone who can reach this address can query the models "
            "(the server has no authentication)",
            file=sys.stderr,
        )
    sys.stderr.flush()
    server.start(loaded)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
