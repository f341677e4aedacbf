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

Then hostile clients (issue 13): ``--clients`` good clients on the
deterministic model alone, then the same good clients beside 4 hostile ones for
``--hostile-seconds``: a header flood (50,000 headers per request, sent again
and again), a slowloris (150 connections trickling a header line a second), a
slow upload (150 connections trickling a body byte a second) and a huge MC
client (1,024 rows x 1,000 samples on an MC model returning the raw samples,
again and again). Reported side by side:
the good requests' p50 / p99 and error count (and the ratios), how fast the
flood got its 431 and the huge MC request its 400, and the latency of a health
probe every 50 ms.

Then a slow model (issue 26): the same good clients alone, then beside one
client that sends, again and again, a row on which a model's ``Loop`` runs for
ever (``slow``, in the same server): each of its requests is stopped at the
server's ``--request-timeout`` (``SLOW_TIMEOUT`` s) and answered 504. Aims:
the good clients' p99 within 1.6x of alone, a health probe's p99 < 100 ms.

Writes ``benchmarks/results/serve.json`` and ``serve.md``.
Run: ``python benchmarks/bench_serve.py`` (``--seconds 5 --hostile-seconds 5`` for a quick check).
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
SLOW_TIMEOUT = 2.0  # the server's --request-timeout: when the slow model's calls are stopped
SLOW_P99_RATIO_TARGET = 1.6
SLOW_HEALTH_P99_TARGET_MS = 100.0


def export_models(folder: Path) -> dict[str, str]:
    """The shipped model as ``digits.onnx`` (deterministic), ``digits_mc.onnx`` (MC, T = 30) and
    ``digits_mc_raw.onnx`` (MC returning the raw samples: the huge MC client's target)."""
    import onnx

    from deploykit.export.convert import keras_to_onnx
    from deploykit.export.metadata import ModelMetadata, write_metadata
    from deploykit.io.models import load_model
    from deploykit.uncertainty import export_mc_onnx

    model = load_model(MODEL)
    proto = keras_to_onnx(model)
    write_metadata(proto, ModelMetadata(input_shape=list(model.input_shape[1:])))
    onnx.save(proto, str(folder / "digits.onnx"))
    export_mc_onnx(model, folder / "digits_mc.onnx", samples=SAMPLES)
    export_mc_onnx(model, folder / "digits_mc_raw.onnx", samples=SAMPLES, include_samples=True)
    from tests.security.hostile_onnx import slow_loop_model

    slow_loop_model(folder, "slow.onnx")  # a row of ones loops ~forever: the slow client's target
    return {"deterministic": "digits", "mc": "digits_mc"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int, threads: int | None, log) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "deploykit.cli.main",
        "serve",
        str(folder),
        "--host",
        HOST,
        "--port",
        str(port),
        "--request-timeout",
        str(SLOW_TIMEOUT),
    ]
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
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + x.astype(np.float32).tobytes()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
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
        "model": model,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "rss_after_warmup_mb": round(rss_warm / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth": round(rss_end / rss_warm - 1, 4),
    }


# --- hostile clients -------------------------------------------------------------------------------------------

SLOW_CONNECTIONS = 150  # per slow kind (headers, body): 300 stalled connections in all


def raw_post(port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def exchange(port: int, data: bytes) -> tuple[float, int]:
    """One request on a fresh connection: (seconds to the status line, status; 0 if the connection broke)."""
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return time.perf_counter() - t0, 0
    try:
        writer.write(data)
        line = await reader.readline()
        status = int(line.split()[1]) if line.startswith(b"HTTP/1.1") else 0
    except (OSError, ValueError, IndexError):
        status = 0
    finally:
        writer.close()
    return time.perf_counter() - t0, status


async def header_flood(port: int, stop_at: float, seen: dict) -> None:
    flood = (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"x%d: y\r\n" % i for i in range(50_000))
        + b"\r\n"
    )
    while time.perf_counter() < stop_at:
        seconds, status = await exchange(port, flood)
        seen.setdefault(status, []).append(seconds)


async def huge_mc(port: int, stop_at: float, seen: dict) -> None:
    rows = np.ones((1024, 64), np.float32).tolist()
    attack = raw_post(
        port,
        "/v1/models/digits_mc_raw:predict",
        json.dumps({"instances": rows, "parameters": {"samples": 1000}}).encode(),
    )
    while time.perf_counter() < stop_at:
        seconds, status = await exchange(port, attack)
        seen.setdefault(status, []).append(seconds)


async def slow_connection(port: int, stop_at: float, head: bytes, drip: bytes, seen: dict) -> None:
    """Open, send ``head``, then one ``drip`` a second until the server answers or closes; again until stop."""
    while time.perf_counter() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            seen["connect failed"] = seen.get("connect failed", 0) + 1
            await asyncio.sleep(1.0)
            continue
        try:
            writer.write(head)
            while time.perf_counter() < stop_at:
                try:
                    answer = await asyncio.wait_for(reader.read(200), 1.0)
                except TimeoutError:
                    writer.write(drip)
                    continue
                key = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
                seen[key] = seen.get(key, 0) + 1
                break
        except OSError:
            seen["reset"] = seen.get("reset", 0) + 1
        finally:
            writer.close()


async def health_probe(port: int, stop_at: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    probe = f"GET /v2/health/live HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(probe)
            await read_response(reader)
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.05)
    finally:
        writer.close()


async def hostile_load(port: int, requests: list[bytes], clients: int, seconds: float, hostile: bool) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    health: list[float] = []
    flood: dict = {}
    mc: dict = {}
    slow_heads: dict = {}
    slow_bodies: dict = {}
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    tasks = [client(port, requests, stop_at, latencies, errors) for _ in range(clients)]
    tasks.append(health_probe(port, stop_at, health))
    if hostile:
        head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
        body_head = head + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        tasks += [header_flood(port, stop_at, flood), huge_mc(port, stop_at, mc)]
        tasks += [slow_connection(port, stop_at, head, b"x-a: b\r\n", slow_heads) for _ in range(SLOW_CONNECTIONS)]
        tasks += [slow_connection(port, stop_at, body_head, b" ", slow_bodies) for _ in range(SLOW_CONNECTIONS)]
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    hms = np.array(health) * 1000
    result = {
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "health_probes": len(health),
        "health_p50_ms": round(float(np.percentile(hms, 50)), 2),
        "health_p99_ms": round(float(np.percentile(hms, 99)), 2),
        "health_max_ms": round(float(hms.max()), 2),
    }
    if hostile:
        result["header_flood"] = _answers(flood)
        result["huge_mc"] = _answers(mc)
        result["slow_headers"] = slow_heads
        result["slow_bodies"] = slow_bodies
    return result


def _answers(seen: dict) -> dict:
    """status -> count, p50 and max ms."""
    return {
        str(status): {
            "count": len(s),
            "p50_ms": round(float(np.percentile(np.array(s) * 1000, 50)), 1),
            "max_ms": round(max(s) * 1000, 1),
        }
        for status, s in sorted(seen.items())
    }


def run_hostile(port: int, xs: np.ndarray, clients: int, seconds: float) -> dict:
    """Good clients on the deterministic model alone, then beside the 4 hostile clients."""
    requests = [binary_request(port, "digits", x[None]) for x in xs]
    asyncio.run(load(port, requests, clients, min(2.0, seconds / 5)))  # warm-up
    alone = asyncio.run(hostile_load(port, requests, clients, seconds, hostile=False))
    attacked = asyncio.run(hostile_load(port, requests, clients, seconds, hostile=True))
    ratios = {k: round(attacked[k] / alone[k], 2) if alone[k] else None for k in ("p50_ms", "p99_ms", "requests_per_s")}
    return {"alone": alone, "with_hostile": attacked, "ratios": ratios}


# --- a slow model --------------------------------------------------------------------------------------------------


async def slow_client(port: int, stop_at: float, seen: dict) -> None:
    """One keep-alive connection sending the slow model a row it never finishes, again and again."""
    x = np.ones((1, 4), np.float32)
    request = binary_request(port, "slow", x)
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            seen.setdefault(status, []).append(time.perf_counter() - t0)
    finally:
        writer.close()


async def slow_load(port: int, requests: list[bytes], clients: int, seconds: float, slow: bool) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    health: list[float] = []
    seen: dict = {}
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    tasks = [client(port, requests, stop_at, latencies, errors) for _ in range(clients)]
    tasks.append(health_probe(port, stop_at, health))
    if slow:
        tasks.append(slow_client(port, stop_at, seen))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    ms, hms = np.array(latencies) * 1000, np.array(health) * 1000
    return {
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": len(errors),
        "health_probes": len(health),
        "health_p50_ms": round(float(np.percentile(hms, 50)), 2),
        "health_p99_ms": round(float(np.percentile(hms, 99)), 2),
        "health_max_ms": round(float(hms.max()), 2),
        **({"slow_answers": _answers(seen)} if slow else {}),
    }


def run_slow(port: int, xs: np.ndarray, clients: int, seconds: float) -> dict:
    """Good clients on the deterministic model alone, then beside the slow-model client."""
    requests = [binary_request(port, "digits", x[None]) for x in xs]
    asyncio.run(load(port, requests, clients, min(2.0, seconds / 5)))  # warm-up
    alone = asyncio.run(slow_load(port, requests, clients, seconds, slow=False))
    beside = asyncio.run(slow_load(port, requests, clients, seconds, slow=True))
    ratios = {k: round(beside[k] / alone[k], 2) if alone[k] else None for k in ("p50_ms", "p99_ms", "requests_per_s")}
    met = bool(
        ratios["p99_ms"] is not None
        and ratios["p99_ms"] <= SLOW_P99_RATIO_TARGET
        and beside["health_p99_ms"] < SLOW_HEALTH_P99_TARGET_MS
        and beside["errors"] == 0
    )
    return {"alone": alone, "with_slow": beside, "ratios": ratios, "aims_met": met}


def slow_markdown(s: dict, seconds: float, clients: int) -> list[str]:
    a, w = s["alone"], s["with_slow"]
    answers = ", ".join(f"{k}: {v['count']}, {v['p50_ms']} / {v['max_ms']}" for k, v in w["slow_answers"].items())
    return [
        "## A slow model",
        "",
        f"{clients} good clients (deterministic model) for {seconds:g} s alone, then for {seconds:g} s beside one "
        "client sending, again and again, a row on which the `slow` model's Loop never ends (same server, "
        f"`--request-timeout {SLOW_TIMEOUT:g}`). A health probe runs every 50 ms in both phases.",
        "",
        "| good clients | req/s | p50 ms | p99 ms | errors | health p50 / p99 / max ms |",
        "|---|---|---|---|---|---|",
        f"| alone | {a['requests_per_s']} | {a['p50_ms']} | {a['p99_ms']} | {a['errors']} | "
        f"{a['health_p50_ms']} / {a['health_p99_ms']} / {a['health_max_ms']} |",
        f"| beside the slow client | {w['requests_per_s']} | {w['p50_ms']} | {w['p99_ms']} | {w['errors']} | "
        f"{w['health_p50_ms']} / {w['health_p99_ms']} / {w['health_max_ms']} |",
        f"| ratio | {s['ratios']['requests_per_s']} | {s['ratios']['p50_ms']} | {s['ratios']['p99_ms']} | | |",
        "",
        f"Slow requests' answers (status: count, p50 / max ms): {answers}.",
        "",
        f"Aims: good clients' p99 within {SLOW_P99_RATIO_TARGET:g}x of alone, health p99 < "
        f"{SLOW_HEALTH_P99_TARGET_MS:g} ms, no good request failed. Met: {s['aims_met']}.",
        "",
    ]


def hostile_markdown(h: dict, seconds: float, clients: int) -> list[str]:
    a, w = h["alone"], h["with_hostile"]
    flood, mc = w["header_flood"], w["huge_mc"]
    rows = [
        "## Hostile clients",
        "",
        f"{clients} good clients (deterministic model, as above) for {seconds:g} s alone, then for {seconds:g} s "
        "beside "
        "4 hostile clients: a header flood (50,000 headers per request, repeated), a slowloris "
        f"({SLOW_CONNECTIONS} connections adding a header line a second), a slow upload ({SLOW_CONNECTIONS} "
        "connections "
        "adding a body byte a second) and a huge MC client (1,024 rows x 1,000 samples on an MC model returning the "
        "raw samples: 97.5 MB of JSON before the limits). A health probe runs every 50 ms in both phases.",
        "",
        "| good clients | req/s | p50 ms | p99 ms | errors | health p50 / p99 / max ms |",
        "|---|---|---|---|---|---|",
        f"| alone | {a['requests_per_s']} | {a['p50_ms']} | {a['p99_ms']} | {a['errors']} | "
        f"{a['health_p50_ms']} / {a['health_p99_ms']} / {a['health_max_ms']} |",
        f"| with 4 hostile clients | {w['requests_per_s']} | {w['p50_ms']} | {w['p99_ms']} | {w['errors']} | "
        f"{w['health_p50_ms']} / {w['health_p99_ms']} / {w['health_max_ms']} |",
        f"| ratio | {h['ratios']['requests_per_s']} | {h['ratios']['p50_ms']} | {h['ratios']['p99_ms']} | | |",
        "",
        "Hostile requests' answers (status: count, p50 / max ms to the status line): header flood "
        + ", ".join(f"{k}: {v['count']}, {v['p50_ms']} / {v['max_ms']}" for k, v in flood.items())
        + " (aim: 431 in < 100 ms); huge MC "
        + ", ".join(f"{k}: {v['count']}, {v['p50_ms']} / {v['max_ms']}" for k, v in mc.items())
        + f". Slow headers: {w['slow_headers']}; slow bodies: {w['slow_bodies']} (answers or closes seen by the "
        "slow clients; unanswered connections were still open at the end).",
        "",
        "Aims: good clients' errors 0 with the hostile clients; health p99 < 50 ms; header flood answered 431 in < 100 "
        "ms.",
        "",
    ]
    return rows


def markdown(result: dict) -> str:
    rows = [
        "| model | clients | req/s (aim) | p50 ms | p90 ms | p99 ms (aim < 50) | errors | RSS after warm-up -> end MB "
        "|",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in result["phases"].items():
        rows.append(
            f"| {kind} ({r['model']}) | {r['clients']} | {r['requests_per_s']} (>= {TARGETS[kind]:g}) | {r['p50_ms']} "
            f"| {r['p90_ms']} | {r['p99_ms']} | {r['errors']} | {r['rss_after_warmup_mb']} -> {r['rss_end_mb']} "
            f"({r['rss_growth']:+.1%}) |"
        )
    m = result["machine"]
    return "\n".join(
        [
            "# deploykit serve: load test on loopback",
            "",
            f"{result['clients']} concurrent keep-alive clients, batch-1 v2 binary requests, {result['seconds']} s per "
            "model; "
            f"MC with T = {SAMPLES}. Server: `deploykit serve` (kserve ModelServer, onnxruntime, threads: "
            f"{result['server_threads'] or 'default'}). Clients and server share {m['cpus']} CPUs; load average "
            f"{m['load_average_at_start']} at the start. Latency is measured by the client (write to last byte, "
            "including "
            "the client's own scheduling).",
            "",
            *rows,
            "",
            f"Server RSS: {result['rss_ready_mb']} MB when ready, {result['rss_end_mb']} MB at the end "
            f"({result['rss_growth_since_ready']:+.1%}).",
            "",
            f"Aims: >= {TARGETS['deterministic']:g} req/s deterministic, >= {TARGETS['mc']:g} req/s MC, p99 < "
            f"{P99_TARGET_MS:g} ms, "
            f"zero errors, RSS growth <= {RSS_GROWTH_TARGET:.0%}. "
            f"Met: {', '.join(f'{k}: {v}' for k, v in result['aims_met'].items())}.",
            "",
            *hostile_markdown(result["hostile"], result["hostile_seconds"], result["clients"]),
            *slow_markdown(result["slow_model"], result["hostile_seconds"], result["clients"]),
            f"Command: `{result['command']}`",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="load per model (default: 30)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument(
        "--hostile-seconds",
        type=float,
        default=10.0,
        help="good clients alone, then beside hostile ones, each this long (default: 10)",
    )
    parser.add_argument("--threads", type=int, default=None, help="server --threads (default: onnxruntime's)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    args = parser.parse_args(argv)
    import psutil

    from deploykit.data.dataset import load_dataset

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
                phases = {
                    kind: run_phase(port, name, xs, args.clients, args.seconds, server) for kind, name in names.items()
                }
                hostile = run_hostile(port, xs, args.clients, args.hostile_seconds)
                slow = run_slow(port, xs, args.clients, args.hostile_seconds)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    rss_end = phases["mc"]["rss_end_mb"]
    aims = {
        kind: bool(
            r["requests_per_s"] >= TARGETS[kind]
            and r["p99_ms"] < P99_TARGET_MS
            and r["errors"] == 0
            and r["rss_growth"] <= RSS_GROWTH_TARGET
        )
        for kind, r in phases.items()
    }
    result = {
        "clients": args.clients,
        "seconds": args.seconds,
        "server_threads": args.threads,
        "samples": SAMPLES,
        "rss_ready_mb": round(rss_ready / 2**20, 1),
        "rss_end_mb": rss_end,
        "rss_growth_since_ready": round(rss_end / (rss_ready / 2**20) - 1, 4),
        "phases": phases,
        "aims_met": aims,
        "hostile_seconds": args.hostile_seconds,
        "hostile": hostile,
        "slow_model": slow,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average_at_start": load_at_start},
        "command": " ".join(["python benchmarks/bench_serve.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    out = Path(args.out)
    write_results("serve", result, markdown(result), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
