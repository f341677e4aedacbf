"""What running validation in a child process costs: ``validate`` isolated versus in-process.

The shipped digits model is exported to ONNX float32, ONNX int8 (static) and
TFLite int8; each artifact is validated ``--rounds`` times both ways,
interleaved. Reported per artifact: the median wall time of one ``validate``
call each way and their ratio, and the batch-1 latency each way as measured
inside the runtime (the child measures its own latency, so the ratio should
stay near 1). Also timed: the first call (starting the worker) and the
recovery from a real native crash (a TFLite file that aborts LiteRT, the test
fixture ``tests/export/data/xnnpack_requant_crash.tflite``) followed by the
next validation. Writes ``benchmarks/results/isolation.json`` and ``.md``.

    python benchmarks/bench_isolation.py [--rounds 5] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, write_results  # noqa: E402  (puts the repository on sys.path)

from deploykit.data.dataset import load_dataset  # noqa: E402
from deploykit.errors import RuntimeCrashError  # noqa: E402
from deploykit.export import export_onnx, export_tflite, validate  # noqa: E402
from deploykit.export.isolated import shared_worker  # noqa: E402
from deploykit.io.models import load_model  # noqa: E402

CRASH = ROOT / "tests" / "export" / "data" / "xnnpack_requant_crash.tflite"
OK = ROOT / "tests" / "export" / "data" / "tiny_elu_ok.tflite"


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _artifacts(model, data, folder: Path) -> dict[str, object]:
    return {
        "model.onnx": export_onnx(model, folder / "model.onnx"),
        "model_int8-static.onnx": export_onnx(
            model, folder / "model_int8-static.onnx", quantization="int8-static", calibration_data=data
        ),
        "model_int8-full.tflite": export_tflite(
            model, folder / "model_int8-full.tflite", "int8-full", representative_data=data
        ),
    }


def _compare(record, data, model, rounds: int, repeats: int) -> dict:
    walls = {True: [], False: []}
    latency = {True: [], False: []}
    for _ in range(rounds):
        for isolated in (True, False):
            seconds, report = _timed(
                lambda isolated=isolated: validate(record, data, model, repeats=repeats, check=False, isolated=isolated)
            )
            walls[isolated].append(seconds)
            latency[isolated].append(report.latency_b1_ms)
    iso, local = statistics.median(walls[True]), statistics.median(walls[False])
    b1_iso, b1_local = statistics.median(latency[True]), statistics.median(latency[False])
    return {
        "validate_s_isolated": iso,
        "validate_s_in_process": local,
        "validate_ratio": iso / local,
        "b1_ms_isolated": b1_iso,
        "b1_ms_in_process": b1_local,
        "b1_ratio": b1_iso / b1_local,
    }


def _tiny_data(folder: Path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 4)).astype(np.float32)
    np.savez(folder / "tiny.npz", x=x, y=(x[:, 1] > x[:, 2]).astype(np.int64))
    return load_dataset(folder / "tiny.npz")


def _crash_recovery(folder: Path) -> dict:
    tiny = _tiny_data(folder)
    validate(OK, tiny, repeats=1, check=False)  # a warm worker
    start = time.perf_counter()
    try:
        validate(CRASH, tiny, repeats=1, check=False)
        raise SystemExit("the crash fixture did not crash LiteRT: the recovery figure would mean nothing")
    except RuntimeCrashError as exc:
        crashed = time.perf_counter() - start
        message = str(exc)
    next_ok, _ = _timed(lambda: validate(OK, tiny, repeats=1, check=False))
    return {"crash_detected_s": crashed, "next_validation_s": next_ok, "message": message}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    data = load_dataset("digits")
    model = load_model(ROOT / "models" / "digits_default.keras")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        records = _artifacts(model, data, folder)
        shared_worker().close()
        cold, _ = _timed(lambda: validate(records["model.onnx"], data, model, repeats=args.repeats, check=False))
        rows = {name: _compare(record, data, model, args.rounds, args.repeats) for name, record in records.items()}
        recovery = _crash_recovery(folder)
    lines = [
        "## Validation isolated in a child process vs in-process",
        "",
        f"digits model, {len(data.x_test)} test inputs, {args.repeats} timing repeats per batch size, "
        f"median of {args.rounds} interleaved rounds.",
        "",
        "| artifact | validate isolated (s) | in-process (s) | ratio | b1 latency isolated (ms) | in-process (ms) | "
        "ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['validate_s_isolated']:.3f} | {r['validate_s_in_process']:.3f} | "
            f"{r['validate_ratio']:.2f}x | "
            f"{r['b1_ms_isolated']:.4f} | {r['b1_ms_in_process']:.4f} | {r['b1_ratio']:.2f}x |"
        )
    lines += [
        "",
        f"First isolated validation (starting the worker): {cold:.2f} s.",
        f"Native crash (real LiteRT abort) reported in {recovery['crash_detected_s']:.2f} s; the next validation, "
        f"in a fresh worker, took {recovery['next_validation_s']:.2f} s.",
        "",
        f"Crash message: `{recovery['message']}`",
    ]
    write_results(
        "isolation",
        {
            "rows": rows,
            "cold_start_s": cold,
            "crash_recovery": recovery,
            "rounds": args.rounds,
            "repeats": args.repeats,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
