"""Load test of ``deploykit serve`` on loopback: a bounded run that stops by itself.

The shipped model (``models/digits_default.keras``, 64 inputs, 10 classes) is
exported as a deterministic ONNX model and as an MC Dropout ONNX model
(T = 30); ``deploykit serve`` runs them in a subprocess on 127.0.0.1. Then, for
each model in turn, ``--clients`` concurrent clients send batch-1 v2 infer
requests with the binary tensor extension (what tritonclient sends) over
keep-alive connections for ``--seconds``. The load generator is a small
asyncio HTTP/1.1 client on raw streams (pre-encoded requests, one connection per
client) so that it costs the shared CPUs as little as possible.

Reported per model: requests/s, p50 / p90 / p99 latency (ms, measured by the
client: write to last byte), errors (non-200 answers or broken connections),
and the server's resident memory (psutil) when ready, after a warm-up, and at
the end. On a 2-core machine the clients and the server share both cores.

Writes ``benchmarks/results/serve.json`` and ``serve.md``.
Run: ``python benchmarks/bench_serve.py`` (``--seconds 5`` for a quick check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import RESULTS, ROOT, write_results  # noqa: E402  (puts the repository on sys.path)
MODEL = ROOT / "models" / "digits_default.keras"
HOST = "127.0.0.1"  # loopback only
SAMPLES = 30
TARGETS = {"deterministic": 1000.0, "mc": 300.0}  # requests/s aims
P99_TARGET_MS = 50.0
RSS_GROWTH_TARGET = 0.10


def export_models(folder: Path) -> dict[str, str]:
    """The shipped model as ``digits.onnx`` (deterministic) and ``digits_mc.onnx`` (MC, T = 30)."""
    import onnx

    from deploykit.export.convert import keras_to_onnx
    from deploykit.export.metadata import ModelMetadata, write_metadata
    from deploykit.io import load_model
    from deploykit.uncertainty import export_mc_onnx

    model = load_model(MODEL)
    proto = keras_to_onnx(model)
    write_metadata(proto, ModelMetadata(input_shape=list(model.input_shape[1:])))
    onnx.save(proto, str(folder / "digits.onnx"))
    export_mc_onnx(model, folder / "digits_mc.onnx", samples=SAMPLES)
    return {"deterministic": "digits", "mc": "digits_mc"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int, threads: int | None, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "deploykit.cli.main", "serve", str(folder), "--host", HOST, "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready within 60 s")


def binary_request(port: int, model: str, x: np.ndarray) -> bytes:
    """A v2 infer request with the binary tensor extension, as tritonclient builds it."""
    header = json.dumps({
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    body = header + x.astype(np.float32).tobytes()
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked framing); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:] if line)}
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    else:  # kserve answers binary responses chunked
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readexactly(2)
    return int(lines[0].split()[1])


async def client(port: int, requests: list[bytes], stop_at: float, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = 0
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status = await read_response(reader)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(f"HTTP {status}")
            i += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def load(port: int, requests: list[bytes], clients: int, seconds: float) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(client(port, requests, t0 + seconds, latencies, errors) for _ in range(clients)))
    return latencies, errors, time.perf_counter() - t0


def run_phase(port: int, model: str, xs: np.ndarray, clients: int, seconds: float, server) -> dict:
    requests = [binary_request(port, model, x[None]) for x in xs]
    asyncio.run(load(port, requests, clients, min(2.0, seconds / 5)))  # warm-up
    rss_warm = server.memory_info().rss
    latencies, errors, elapsed = asyncio.run(load(port, requests, clients, seconds))
    rss_end = server.memory_info().rss
    ms = np.array(latencies) * 1000
    return {
        "model": model, "clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2), "errors": len(errors), "error_kinds": sorted(set(errors))[:5],
        "rss_after_warmup_mb": round(rss_warm / 2**20, 1), "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth": round(rss_end / rss_warm - 1, 4),
    }


def markdown(result: dict) -> str:
    rows = ["| model | clients | req/s (aim) | p50 ms | p90 ms | p99 ms (aim < 50) | errors | RSS after warm-up -> end MB |",
            "|---|---|---|---|---|---|---|---|"]
    for kind, r in result["phases"].items():
        rows.append(f"| {kind} ({r['model']}) | {r['clients']} | {r['requests_per_s']} (>= {TARGETS[kind]:g}) | {r['p50_ms']} "
                    f"| {r['p90_ms']} | {r['p99_ms']} | {r['errors']} | {r['rss_after_warmup_mb']} -> {r['rss_end_mb']} "
                    f"({r['rss_growth']:+.1%}) |")
    m = result["machine"]
    return "\n".join([
        "# deploykit serve: load test on loopback", "",
        f"{result['clients']} concurrent keep-alive clients, batch-1 v2 binary requests, {result['seconds']} s per model; "
        f"MC with T = {SAMPLES}. Server: `deploykit serve` (kserve ModelServer, onnxruntime, threads: "
        f"{result['server_threads'] or 'default'}). Clients and server share {m['cpus']} CPUs; load average "
        f"{m['load_average_at_start']} at the start. Latency is measured by the client (write to last byte, including "
        "the client's own scheduling).", "",
        *rows, "",
        f"Server RSS: {result['rss_ready_mb']} MB when ready, {result['rss_end_mb']} MB at the end "
        f"({result['rss_growth_since_ready']:+.1%}).", "",
        f"Aims: >= {TARGETS['deterministic']:g} req/s deterministic, >= {TARGETS['mc']:g} req/s MC, p99 < {P99_TARGET_MS:g} ms, "
        f"zero errors, RSS growth <= {RSS_GROWTH_TARGET:.0%}. "
        f"Met: {', '.join(f'{k}: {v}' for k, v in result['aims_met'].items())}.",
        "", f"Command: `{result['command']}`", "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="load per model (default: 30)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--threads", type=int, default=None, help="server --threads (default: onnxruntime's)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    args = parser.parse_args(argv)
    import psutil

    from deploykit.data import load_dataset

    load_at_start = round(os.getloadavg()[0], 2)  # other work on the machine skews the figures
    xs = load_dataset("digits").x_test[:256]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = export_models(folder)
        port = free_port()
        with open(folder / "server.log", "w") as log:
            proc = start_server(folder, port, args.threads, log)
            try:
                server = psutil.Process(proc.pid)
                rss_ready = server.memory_info().rss
                phases = {kind: run_phase(port, name, xs, args.clients, args.seconds, server) for kind, name in names.items()}
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    rss_end = phases["mc"]["rss_end_mb"]
    aims = {kind: bool(r["requests_per_s"] >= TARGETS[kind] and r["p99_ms"] < P99_TARGET_MS and r["errors"] == 0
                       and r["rss_growth"] <= RSS_GROWTH_TARGET) for kind, r in phases.items()}
    result = {
        "clients": args.clients, "seconds": args.seconds, "server_threads": args.threads, "samples": SAMPLES,
        "rss_ready_mb": round(rss_ready / 2**20, 1), "rss_end_mb": rss_end,
        "rss_growth_since_ready": round(rss_end / (rss_ready / 2**20) - 1, 4), "phases": phases, "aims_met": aims,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average_at_start": load_at_start},
        "command": " ".join(["python benchmarks/bench_serve.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    out = Path(args.out)
    write_results("serve", result, markdown(result), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
