"""``deploykit serve``: serve exported ONNX models (deterministic and MC Dropout) over KServe v2 and v1 REST."""

from __future__ import annotations

from deploykit.cli.common import add_command
from deploykit.serve import config as defaults
from deploykit.serve.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_PORT,
    DEFAULT_SAMPLES,
)
from deploykit.serve.preferred import DEFAULT_PREFERENCE, PREFERENCES


def register(sub) -> None:
    p = add_command(
        sub,
        "serve",
        _run,
        help="serve exported ONNX models over HTTP (KServe v2 / Open Inference Protocol, and v1)",
        description="Serve DIR_OR_MODEL with onnxruntime: one .onnx file, every .onnx file of a folder (named by "
        "file stem), or a Triton-style repository (<name>/<version>/model.onnx). Deterministic models return "
        "`probabilities`; MC Dropout models (deploykit mc) return mean, std, predictive_entropy, "
        "mutual_information and predicted_class, with the number of samples per request in the request's "
        'parameters ({"parameters": {"samples": 50}}). Endpoints: /v2/health/live, /v2/health/ready, '
        "/v2/models/NAME (metadata: class labels, what each output means), /v2/models/NAME/ready, "
        "/v2/models/NAME/infer, /v2/models/NAME/config, /v2/repository/index, /v1/models/NAME:predict, /metrics. "
        "Triton's classification extension is supported (tritonclient's class_count). "
        "SIGTERM or Ctrl+C stops it after the requests in flight.",
    )
    p.add_argument(
        "model", metavar="DIR_OR_MODEL", help="an .onnx file, a folder of them, or a Triton-style repository"
    )
    p.add_argument("--name", default=None, help="serve the one model of DIR_OR_MODEL under this name")
    p.add_argument(
        "--prefer",
        choices=PREFERENCES,
        default=DEFAULT_PREFERENCE,
        help="a folder `deploykit optimize` wrote: also serve, as `recommended`, the shipped ONNX model its "
        f"report.json names the fastest (latency) or the smallest (size) (default: {DEFAULT_PREFERENCE})",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST}, this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"MC models: samples when a request does not set them (default: {DEFAULT_SAMPLES})",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="onnxruntime intra-op threads per model (default: onnxruntime's)"
    )
    p.add_argument(
        "--max-rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        help=f"most instances per request (default: {DEFAULT_MAX_ROWS})",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=DEFAULT_MAX_SAMPLES,
        help=f"most samples a request may ask for (default: {DEFAULT_MAX_SAMPLES}; a model's own limit also applies)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body (default: {DEFAULT_MAX_BODY_BYTES}, 16 MiB)",
    )
    limits = p.add_argument_group("work, connection limits and timeouts")
    for flag, kind, default, text in [
        ("--max-network-rows", int, defaults.DEFAULT_MAX_NETWORK_ROWS, "most rows x samples per request"),
        ("--max-response-values", int, defaults.DEFAULT_MAX_RESPONSE_VALUES, "most numbers in one response"),
        ("--max-header-count", int, defaults.DEFAULT_MAX_HEADER_COUNT, "most request headers (more: 431)"),
        ("--max-header-bytes", int, defaults.DEFAULT_MAX_HEADER_BYTES, "largest request line + headers (more: 431)"),
        ("--header-timeout", float, defaults.DEFAULT_HEADER_TIMEOUT, "seconds for a request's headers to arrive"),
        (
            "--body-timeout",
            float,
            defaults.DEFAULT_BODY_TIMEOUT,
            "seconds for a request's body to arrive after its headers",
        ),
        ("--keep-alive-timeout", float, defaults.DEFAULT_KEEP_ALIVE_TIMEOUT, "seconds an idle connection stays open"),
        (
            "--request-timeout",
            float,
            defaults.DEFAULT_REQUEST_TIMEOUT,
            "seconds one inference may run; then it is stopped and the client gets 504",
        ),
        (
            "--max-connections",
            int,
            defaults.DEFAULT_MAX_CONNECTIONS,
            "most open connections (kept below the file descriptor limit; the longest-waiting idle or slow one "
            "is closed to make room)",
        ),
    ]:
        limits.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default})")


def _run(args) -> int:
    from deploykit.serve.config import ServeConfig
    from deploykit.serve.discover import discover_models

    config = ServeConfig(
        host=args.host,
        port=args.port,
        samples=args.samples,
        threads=args.threads,
        max_rows=args.max_rows,
        max_samples=args.max_samples,
        max_body_bytes=args.max_body_bytes,
        max_network_rows=args.max_network_rows,
        max_response_values=args.max_response_values,
        max_header_count=args.max_header_count,
        max_header_bytes=args.max_header_bytes,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
        request_timeout=args.request_timeout,
    )
    models = discover_models(
        args.model, name=args.name, prefer=args.prefer
    )  # bad options and paths fail here, before kserve is imported

    from deploykit.serve.server import serve_models

    serve_models(models, config, verbose=args.verbose)
    return 0
