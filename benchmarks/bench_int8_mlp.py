"""Whether int8 ONNX is faster than float32 at batch 256 on the book's structured MLP, on this CPU, and why (issue 23).

The book network's shape after structured pruning (784 -> h1 -> h2 -> 10, ELU; widths 300/100 whole, 90/30 at 70 %
removed, 60/20 at 80 %), trained one epoch on the Fashion sample (``../shared``; else random images: only the
speed figures mean something), exported float32 by deploykit, then quantized by onnxruntime in every form it offers:
dynamic (``MatMulInteger`` / ``DynamicQuantizeMatMul``; weights s8 or u8, per channel or per tensor) and static
(QDQ and QOperator, activations s8 or u8, per channel or per tensor), 256 calibration rows. Each file is timed in
onnxruntime, 1 intra-op thread, graph optimizations on (the default), interleaved, fastest call at batch 1 and 256;
the ops onnxruntime runs after its fusions are listed. ``--profile`` adds onnxruntime's per-node profile of the
70 % model's float32, int8-dynamic and static QDQ files at batch 256 (where the time goes). Writes
``benchmarks/results/int8_mlp.json`` and ``.md``::

    python benchmarks/bench_int8_mlp.py [--profile]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from common import FASHION, RESULTS, write_results  # noqa: E402  (puts the repository on sys.path)

WIDTHS = {"whole (300/100)": (300, 100), "70 % removed (90/30)": (90, 30), "80 % removed (60/20)": (60, 20)}
ROUNDS, CALLS_B1, CALLS_B256 = 15, 50, 3


def images() -> tuple[np.ndarray, np.ndarray, str]:
    """(x as 784 raw pixel features, y, where they come from)."""
    if FASHION.exists():
        d = np.load(FASHION)
        x = d[next(k for k in d.files if k.startswith("x"))].reshape(-1, 784).astype("float32")
        y = d[next(k for k in d.files if k.startswith("y"))].astype("int64")
        return x[: len(y)], y[: len(x)], "the Fashion-MNIST sample"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (1024, 784)).astype("float32"), rng.integers(0, 10, 1024), "random images"


def float_file(widths: tuple[int, int], x, y, path: Path) -> Path:
    """The MLP of these hidden widths (Keras 3, as users build it), trained briefly, as deploykit's float32 ONNX."""
    import keras

    from deploykit.export import export_onnx

    layers = keras.layers
    model = keras.Sequential(
        [keras.Input((784,)), layers.Dense(widths[0], activation="elu"), layers.Dense(widths[1], activation="elu")]
        + [layers.Dense(10, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    return export_onnx(model, path, quantization="float32").path


def variants(src: Path, x) -> dict[str, Path]:
    """Every int8 form onnxruntime's quantizer writes for ``src`` (deploykit's two marked)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    name = onnx.load(str(src)).graph.input[0].name

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{name: x[i : i + 1]} for i in range(256)])

        def get_next(self):
            return next(self.rows, None)

    files = {"float32 (deploykit float32)": src}
    for label, weight, per_channel in (
        ("dynamic, s8 weights per channel (deploykit int8-dynamic)", QuantType.QInt8, True),
        ("dynamic, s8 weights per tensor", QuantType.QInt8, False),
        ("dynamic, u8 weights per tensor", QuantType.QUInt8, False),
    ):
        path = src.with_name(f"{src.stem}_{len(files)}.onnx")
        quantize_dynamic(str(src), str(path), weight_type=weight, per_channel=per_channel)
        files[label] = path
    from deploykit.export.config import ActivationType

    # what activation_type="auto" (the default) writes here: uint8 activations on a CPU with VNNI, int8 elsewhere
    deploykit_static = "u8s8" if ActivationType.AUTO.resolved() is ActivationType.UINT8 else "s8s8"
    for fmt, fmt_name in ((QuantFormat.QDQ, "QDQ"), (QuantFormat.QOperator, "QOperator")):
        for act, act_name in ((QuantType.QInt8, "s8s8"), (QuantType.QUInt8, "u8s8")):
            for per_channel in (True, False):
                path = src.with_name(f"{src.stem}_{len(files)}.onnx")
                quantize_static(
                    str(src),
                    str(path),
                    Rows(),
                    quant_format=fmt,
                    per_channel=per_channel,
                    activation_type=act,
                    weight_type=QuantType.QInt8,
                )
                ours = fmt_name == "QDQ" and act_name == deploykit_static and per_channel
                mark = " (deploykit int8-static on this CPU)" if ours else ""
                files[f"static {fmt_name} {act_name} {'per channel' if per_channel else 'per tensor'}{mark}"] = path
    return files


def cpu() -> str:
    """The CPU's model name and its int8-relevant vector extensions (VNNI is what makes int8 GEMMs fast)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{name} ({', '.join(f for f in wanted if f in flags) or 'none of ' + '/'.join(wanted)})"


def session(path: Path, optimized: Path | None = None, profile: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    if profile is not None:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed(files: dict[str, Path], x) -> dict[str, dict]:
    """Fastest call (b1 µs, b256 ms) of each file, interleaved, and the ops onnxruntime runs after its fusions."""
    import onnx

    sessions = {k: session(p, p.with_suffix(".optimized")) for k, p in files.items()}
    name = next(iter(sessions.values())).get_inputs()[0].name
    samples = {k: ([], []) for k in files}
    for _ in range(ROUNDS):
        for k, s in sessions.items():
            for slot, batch, calls in ((0, x[:1].copy(), CALLS_B1), (1, x[:256].copy(), CALLS_B256)):
                for _ in range(calls):
                    start = time.perf_counter()
                    s.run(None, {name: batch})
                    samples[k][slot].append(time.perf_counter() - start)
    ops = {
        k: collections.Counter(n.op_type for n in onnx.load(str(p.with_suffix(".optimized"))).graph.node)
        for k, p in files.items()
    }
    return {k: {"b1_us": 1e6 * min(v[0]), "b256_ms": 1e3 * min(v[1]), "ops": dict(ops[k])} for k, v in samples.items()}


def profiled(files: dict[str, Path], x, folder: Path) -> dict[str, list]:
    """Median µs per node over 200 calls at batch 256 (onnxruntime's profiler), costliest first."""
    out = {}
    for label, path in files.items():
        s = session(path, profile=str(folder / "profile"))
        name = s.get_inputs()[0].name
        for _ in range(200):
            s.run(None, {name: x[:256]})
        events = json.loads(Path(s.end_profiling()).read_text())
        per_node = collections.defaultdict(list)
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_node[(e["args"]["op_name"], e["name"][: -len("_kernel_time")])].append(e["dur"])
        rows = sorted(((float(np.median(v)), op, node) for (op, node), v in per_node.items()), reverse=True)
        out[label] = [{"op": op, "node": node, "us": us} for us, op, node in rows]
    return out


def render(runs: list[dict], profiles: dict, source: str, machine: str) -> str:
    lines = [
        "# int8 vs float32 ONNX on the book's structured MLP (issue 23)",
        "",
        f"Data: {source}. CPU: {machine}. onnxruntime, 1 intra-op thread, graph optimizations on; fastest of "
        f"interleaved calls ({ROUNDS}x{CALLS_B1} at b1, {ROUNDS}x{CALLS_B256} at b256). Speed-up: the same "
        "widths' float32 file over the int8 one (> 1: int8 faster). Ops: what onnxruntime runs after its fusions.",
    ]
    for run in runs:
        base = run["files"]["float32 (deploykit float32)"]
        f1, f256 = base["b1_us"], base["b256_ms"]
        lines += ["", f"## {run['widths']}", "", "| file | b1 µs | b256 ms | b1 / b256 vs float32 | ops run |"]
        lines += ["|---|---:|---:|---:|---|"]
        for label, r in run["files"].items():
            ops = ", ".join(f"{op} {n}" for op, n in r["ops"].items())
            lines.append(
                f"| {label} | {r['b1_us']:.1f} | {r['b256_ms']:.3f} | {f1 / r['b1_us']:.2f}x / "
                f"{f256 / r['b256_ms']:.2f}x | {ops} |"
            )
    for label, rows in profiles.items():
        total = sum(r["us"] for r in rows)
        lines += ["", f"### Profile at b256, 70 % removed, {label}: {total:.0f} µs over the nodes", ""]
        lines += ["| op | node | µs | share |", "|---|---|---:|---:|"]
        lines += [f"| {r['op']} | `{r['node'][:60]}` | {r['us']:.0f} | {100 * r['us'] / total:.0f}% |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="also profile the 70 %% model's main files per node")
    parser.add_argument("--out", type=Path, default=None, help="folder of the results (default: benchmarks/results)")
    args = parser.parse_args()
    x, y, source = images()
    machine = cpu()
    runs, profiles = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, widths in WIDTHS.items():
            files = variants(float_file(widths, x, y, Path(tmp) / f"mlp_{widths[0]}.onnx"), x)
            runs.append({"widths": label, "files": timed(files, x)})
            print(render(runs[-1:], {}, source, machine), flush=True)
            if args.profile and widths == WIDTHS["70 % removed (90/30)"]:
                keys = [k for k in files if "deploykit" in k]
                profiles = profiled({k: files[k] for k in keys}, x, Path(tmp))
    data = {"machine": machine, "data": source, "runs": runs, "profiles": profiles}
    write_results("int8_mlp", data, render(runs, profiles, source, machine), args.out or RESULTS)


if __name__ == "__main__":
    main()
