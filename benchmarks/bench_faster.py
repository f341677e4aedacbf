"""int8 that pays on CNNs: float32 against each ONNX int8 recipe, batch 1 and batch 256, in one run.

Two convnets users train on 28x28 images (issue 23's small CNN, Rescaling -> Conv32 -> BN -> ReLU -> pool
-> Conv64 -> BN -> ReLU -> pool -> Dense 10, and the keras.io "Simple MNIST convnet"), trained briefly on the
Fashion-MNIST sample when ``../shared`` is present (else on random images: speed does not depend on the
weights), exported by deploykit as float32, ``int8-dynamic`` (which leaves convolutions in float) and
``int8-static`` (QDQ), beside onnxruntime's plain ``quantize_dynamic`` of every op (what ``int8-dynamic``
did before: convolutions as ``ConvInteger``). Every file is timed in the same process, interleaved, with
1 intra-op thread and with onnxruntime's default; ratios are against float32 of the same model and
thread count. Then each model goes through ``deploykit optimize`` (ONNX, the int8 recipes; the book MLP with
``--structured 0.5``) and the table at the end shows what its objective recommends. Writes
``benchmarks/results/faster.json`` and ``.md``::

    python benchmarks/bench_faster.py
"""

from __future__ import annotations

import gzip
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from common import FASHION, write_results  # noqa: E402  (puts the repository on sys.path)

REPEATS_B1, REPEATS_B256 = 200, 15


def small_cnn(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(10, activation="softmax"),
        ]
    )


def keras_io_convnet(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )


def images() -> tuple[np.ndarray, np.ndarray, str]:
    if FASHION.exists():
        data = np.load(FASHION)
        return data["x"][..., None].astype(np.float32), data["y"].astype(np.int64), "Fashion-MNIST sample"
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (1000, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 1000), "random images"


def exports(model, folder: Path, x: np.ndarray) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from deploykit.export import export_onnx

    files = {}
    for name in ("float32", "int8-dynamic", "int8-static"):
        files[name] = export_onnx(model, folder / f"{name}.onnx", quantization=name, calibration_data=x).path
    every_op = folder / "every-op-dynamic.onnx"
    quantize_dynamic(str(files["float32"]), str(every_op), weight_type=QuantType.QInt8, per_channel=True)
    files["ort quantize_dynamic, every op"] = every_op
    return files


def timed(files: dict[str, Path], x: np.ndarray, threads: int | None) -> dict[str, tuple[float, float]]:
    """(batch-1 ms, batch-256 ms) per file, the files' calls interleaved so load changes hit all alike."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    out = {}
    for batch, repeats, slot in ((1, REPEATS_B1, 0), (256, REPEATS_B256, 1)):
        xb = np.resize(x, (batch, *x.shape[1:]))
        samples = {k: [] for k in sessions}
        for _ in range(3):
            for s in sessions.values():
                s.run(None, {s.get_inputs()[0].name: xb})
        for _ in range(repeats):
            for k, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: xb})
                samples[k].append(time.perf_counter() - t0)
        for k, v in samples.items():
            out.setdefault(k, [0.0, 0.0])[slot] = 1000 * float(np.median(v))
    return {k: tuple(v) for k, v in out.items()}


def agreement(files: dict[str, Path], x: np.ndarray, reference: str = "float32") -> dict[str, float]:
    import onnxruntime as ort

    preds = {}
    for k, p in files.items():
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        preds[k] = s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1)
    return {k: float(np.mean(v == preds[reference])) for k, v in preds.items()}


BOOK = FASHION.parents[1] / "models" / "book_fashion_bn_dropout.keras"


def book_rows(fractions=(0.5, 0.7)) -> list[dict]:
    """The book's MLP: float32 and int8-dynamic ONNX of the original and of structured-pruned copies."""
    from deploykit.core.evaluate import score
    from deploykit.data.dataset import load_dataset
    from deploykit.export import export_onnx
    from deploykit.io.models import load_model
    from deploykit.sparsity import prune_structured

    if not (BOOK.exists() and FASHION.exists()):
        print("the book's model or the Fashion sample is absent: its rows are skipped")
        return []
    model, data = load_model(BOOK), load_dataset(str(FASHION))
    models = {"original": (model, None)}
    for f in fractions:
        pruned, report = prune_structured(model, data, f)
        models[f"structured {f:.0%}"] = (pruned, report)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files, tests = {}, {}
        for name, (m, _) in models.items():
            for q in ("float32", "int8-dynamic"):
                path = Path(tmp) / f"{name.replace(' ', '_').replace('%', '')}_{q}.onnx"
                files[f"{name}, {q}"] = export_onnx(m, path, quantization=q, calibration_data=data).path
            tests[name] = score(m, data.x_test, data.y_test)
        agree = agreement(files, data.x_test, "original, float32")
        for threads in (1, None):
            times = timed(files, data.x_test, threads)
            f1, f256 = times["original, float32"]
            for variant, (b1, b256) in times.items():
                name = variant.split(",")[0]
                report = models[name][1]
                rows.append(
                    {
                        "model": "book MLP",
                        "variant": variant,
                        "threads": threads or "default",
                        "b1_ms": b1,
                        "b256_ms": b256,
                        "b1_speedup": f1 / b1,
                        "b256_speedup": f256 / b256,
                        "gzip": len(gzip.compress(files[variant].read_bytes())),
                        "agreement": agree[variant],
                        "conv_op": _ops(files[variant]),
                        "test_accuracy": tests[name],
                        "test_change": tests[name] - tests["original"],
                        "mac_ratio": report.mac_ratio if report else 1.0,
                    }
                )
    return rows


OBJECTIVE_QUANTIZE = "float32,int8-dynamic,int8-static"


def objective_rows(name: str, model, data, **options) -> list[dict]:
    """What ``optimize`` recommends per objective (one run: report.json holds all three), ONNX only, timed by the
    run itself at batch 1 and 256 against the original's float32 ONNX, default threads."""
    from deploykit.pipeline import optimize

    with tempfile.TemporaryDirectory() as tmp:
        result = optimize(
            model, data, out_dir=Path(tmp) / "out", mc=False, formats="onnx", quantize=OBJECTIVE_QUANTIZE, **options
        )
        entry, rows = result.report.get("objective"), {r.file: r for r in result.artifacts}
        structured = next((s for s in result.steps if s.step == "structured"), None)
    if not entry:
        return []
    kept_structured = structured is not None and structured.status.value == "done" and "fewer" in structured.reason
    cands = {c["file"]: c for c in entry["candidates"]}
    out = []
    for objective, file in entry["recommended"].items():
        r, c = rows[file], cands[file]
        out.append(
            {
                "model": name,
                "objective": objective + (" (default)" if objective == "balanced" else ""),
                "file": file,
                "structured": options.get("structured", 0.0) if kept_structured else 0.0,
                "sparsity": r.sparsity,
                "quantization": r.quantization,
                "test_change": r.accuracy_change,
                "ci95": r.ci95,
                "b1_speedup": c["speedup_b1"],
                "b256_speedup": c["speedup_batch"],
                "compression": r.compression,
                "slower_note": c["slower"],
            }
        )
    return out


def main() -> None:
    from deploykit.backend import keras
    from deploykit.io.inputs import as_dataset

    x, y, source = images()
    rows, chosen = book_rows(), book_objective_rows()
    data = as_dataset((x, y))  # the run's own splits: trained on train, timed and compared on test
    for name, build in (("small CNN", small_cnn), ("keras.io convnet", keras_io_convnet)):
        model = build(keras)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=2, batch_size=64, verbose=0)
        chosen += objective_rows(name, model, data, sparsity="none")
        with tempfile.TemporaryDirectory() as tmp:
            files = exports(model, Path(tmp), data.x_train[:700])
            agree = agreement(files, data.x_test)
            for threads in (1, None):
                times = timed(files, data.x_test, threads)
                f1, f256 = times["float32"]
                for variant, (b1, b256) in times.items():
                    ops = _ops(files[variant])
                    rows.append(
                        {
                            "model": name,
                            "variant": variant,
                            "threads": threads or "default",
                            "b1_ms": b1,
                            "b256_ms": b256,
                            "b1_speedup": f1 / b1,
                            "b256_speedup": f256 / b256,
                            "gzip": len(gzip.compress(files[variant].read_bytes())),
                            "agreement": agree[variant],
                            "conv_op": ops,
                        }
                    )
    md = render(rows, source) + render_objective(chosen)
    machine = platform.processor() or platform.machine()
    write_results("faster", {"machine": machine, "data": source, "rows": rows, "objective": chosen}, md)


def book_objective_rows() -> list[dict]:
    """The book's MLP through optimize with half its hidden units removed (kept only within the budget)."""
    from deploykit.data.dataset import load_dataset

    if not (BOOK.exists() and FASHION.exists()):
        return []
    return objective_rows("book MLP", str(BOOK), load_dataset(str(FASHION)), structured=0.5, sparsity="none", epochs=5)


def render_objective(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [
        "",
        "",
        "## The objective's choice (`deploykit optimize`, ONNX, one run per model)",
        "",
        "Each run's report.json recommends a file per objective among its shipped ONNX files (accepted on validation, "
        "confirmed on test); speed-ups are the run's own, interleaved against the original model's float32 ONNX "
        "(default threads); compression: the original's .keras gzip over the file's gzip. The CNN runs keep every "
        "weight (`--no-sparsity`: the int8 recipes only); the book MLP's tries `--structured 0.5` (5 epochs).",
        "",
        "| model | objective | file | kept (structured, magnitude, precision) | Δ test acc [95% CI] | b1 / b256 "
        "speed-up | compression | slower than float32 |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        ci = "" if r["ci95"] is None else f" [{100 * r['ci95'][0]:+.2f}, {100 * r['ci95'][1]:+.2f}]"
        change = "—" if r["test_change"] is None else f"{100 * r['test_change']:+.2f} pt{ci}"
        lines.append(
            f"| {r['model']} | {r['objective']} | `{r['file']}` | {100 * r['structured']:.0f}%, "
            f"{100 * r['sparsity']:.0f}%, {r['quantization']} | {change} | {r['b1_speedup']:.2f}x / "
            f"{r['b256_speedup']:.2f}x | {r['compression']:.1f}x | {r['slower_note'] or '—'} |"
        )
    return "\n".join(lines)


def _ops(path: Path) -> str:
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    return ", ".join(sorted(ops & {"Conv", "ConvInteger", "QLinearConv", "MatMulInteger", "DynamicQuantizeMatMul"})) + (
        " (QDQ)" if "QuantizeLinear" in ops else ""
    )


def render(rows: list[dict], source: str) -> str:
    lines = [
        "# Faster: structured pruning and int8 against float32 (onnxruntime, CPU)",
        "",
        f"Trained 2 epochs on the {source}; speed-up = float32 time / variant time, same model and threads "
        "(> 1: faster). Agreement: predicted class equal to float32's on the held-out rows. Book MLP rows: "
        "the chapter's network on the Fashion sample, structured-pruned with `prune_structured` (its test "
        "accuracy change and MAC ratio in the notes below the table).",
        "",
        "| model | variant | threads | b1 ms | b1 speed-up | b256 ms | b256 speed-up | gzip | agreement | conv ops |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['threads']} | {r['b1_ms']:.3f} | {r['b1_speedup']:.2f}x | "
            f"{r['b256_ms']:.2f} | {r['b256_speedup']:.2f}x | {r['gzip'] / 1024:.1f} KiB | "
            f"{100 * r['agreement']:.1f}% | {r['conv_op']} |"
        )
    book = {r["variant"].split(",")[0]: r for r in rows if r["model"] == "book MLP"}
    if book:
        lines += [
            "",
            "Book MLP, test split (543 rows; one row = 0.18 pt): "
            + "; ".join(
                f"{name}: accuracy {100 * r['test_accuracy']:.2f}% ({100 * r['test_change']:+.2f} pt), "
                f"{r['mac_ratio']:.2f}x fewer MACs"
                for name, r in book.items()
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
