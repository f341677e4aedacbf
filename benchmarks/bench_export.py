"""Export benchmarks: size of pruned + int8 TFLite, onnxruntime vs Keras latency, int8 vs float32 speed.

(a) The chapter's 300-100 dense net (deploykit.train, 1cycle) on digits and on
    the Fashion-MNIST sample, pruned to 80% with ``deploykit.prune`` and
    exported as full-integer int8 TFLite: gzip size against the original
    float32 Keras file (target >= 12x smaller; TF-MOT's own example reports
    10x) and LiteRT accuracy against the original model (target: within 1
    point).
(b) onnxruntime float32 batch-1 latency vs calling the tf_keras model
    directly (``model(x)``) on the chapter's 784-300-100-10 model (target >= 50x).
(c) int8 (and float16) vs float32 latency in onnxruntime and LiteRT, batch 1
    and batch 256, reported as measured.

Timings are medians of interleaved repeated runs. Writes
``benchmarks/results/export.json`` and ``export.md``.
Run: ``python benchmarks/bench_export.py`` (about 2-4 minutes on 2 cores).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import FASHION, write_results  # noqa: E402  (puts the repository on sys.path)

SIZE_TARGET = 12.0  # gzip(pruned + int8 TFLite) at least this many times smaller than the float32 Keras file
ACCURACY_POINTS = 1.0  # ... with accuracy within this many points of the original model
LATENCY_TARGET = 50.0  # onnxruntime float32 batch-1 at least this many times faster than model(x)
SPARSITY = 0.8
HIDDEN = (300, 100)


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


T0 = time.monotonic()


def train_chapter_model(data):
    from deploykit.training import TrainConfig, train

    config = TrainConfig(hidden=HIDDEN, epochs=30, patience=10, learning_rate=2e-3, seed=42)
    return train(config, data).model


def size_case(name: str, data, tmp: Path) -> tuple[dict, object]:
    """(a) on one dataset; returns the row and the trained (unpruned) model."""
    from deploykit.export import export_tflite, validate
    from deploykit.sparsity import prune
    from deploykit.sparsity.report import saved_sizes

    say(f"{name}: training the chapter's {'-'.join(map(str, (data.num_features, *HIDDEN, data.num_classes)))} model")
    model = train_chapter_model(data)
    keras_bytes, keras_gzip = saved_sizes(model)
    say(f"{name}: pruning to {SPARSITY:.0%} (deploykit.prune)")
    pruned, sparsity = prune(model, data, SPARSITY)
    say(f"{name}: exporting full-integer int8 TFLite")
    int8 = export_tflite(pruned, tmp / f"{name}_pruned_int8.tflite", quantization="int8-full", representative_data=data)
    float32 = export_tflite(model, tmp / f"{name}_float32.tflite")
    vs_original = validate(int8, data, model, repeats=20, check=False)
    vs_pruned = validate(int8, data, pruned, repeats=1, batch_sizes=(1,), check=False)
    drop = 100 * (vs_original.reference_accuracy - vs_original.accuracy)
    row = {
        "data": data.summary(),
        "model": f"{data.num_features}-{'-'.join(map(str, HIDDEN))}-{data.num_classes}",
        "keras_file_bytes": keras_bytes,
        "keras_file_gzip_bytes": keras_gzip,
        "float32_tflite_gzip_bytes": float32.gzip_bytes,
        "pruned_int8_tflite_bytes": int8.size_bytes,
        "pruned_int8_tflite_gzip_bytes": int8.gzip_bytes,
        "size_ratio": keras_bytes / int8.gzip_bytes,
        "gzip_vs_gzip_ratio": keras_gzip / int8.gzip_bytes,  # TF-MOT's comparison (both gzipped)
        "size_target": SIZE_TARGET,
        "sparsity": sparsity.sparsity,
        "accuracy_original": vs_original.reference_accuracy,
        "accuracy_pruned_keras": vs_pruned.reference_accuracy,
        "accuracy_pruned_int8_litert": vs_original.accuracy,
        "accuracy_drop_points": drop,
        "agreement_int8_vs_original": vs_original.agreement,
        "agreement_int8_vs_pruned": vs_pruned.agreement,
        "int8_preparation": int8.preparation,
        "meets_size_target": keras_bytes / int8.gzip_bytes >= SIZE_TARGET,
        "meets_accuracy_target": drop <= ACCURACY_POINTS,
    }
    say(
        f"{name}: {row['size_ratio']:.1f}x smaller, accuracy {row['accuracy_original']:.4f} -> "
        f"{row['accuracy_pruned_int8_litert']:.4f}"
    )
    return row, model


def latency_case(model, data, tmp: Path) -> dict:
    """(b) and (c) on one model: Keras model(x) vs onnxruntime and LiteRT, every variant."""
    from deploykit.export import export_onnx, export_tflite, open_runner
    from deploykit.export.runtimes import interleaved_medians, median_seconds

    say("exporting the latency variants")
    files = {
        ("onnxruntime", "float32"): export_onnx(model, tmp / "lat.onnx").path,
        ("onnxruntime", "float16"): export_onnx(model, tmp / "lat16.onnx", quantization="float16").path,
        ("onnxruntime", "int8-dynamic"): export_onnx(
            model, tmp / "latd.onnx", quantization="int8-dynamic", calibration_data=data
        ).path,
        ("onnxruntime", "int8-static"): export_onnx(
            model, tmp / "lat8.onnx", quantization="int8-static", calibration_data=data
        ).path,
        ("LiteRT", "float32"): export_tflite(model, tmp / "lat.tflite").path,
        ("LiteRT", "float16"): export_tflite(model, tmp / "lat16.tflite", quantization="float16").path,
        ("LiteRT", "int8-weights"): export_tflite(
            model, tmp / "latd.tflite", quantization="int8-weights", representative_data=data
        ).path,
        ("LiteRT", "int8-full"): export_tflite(
            model, tmp / "lat8.tflite", quantization="int8-full", representative_data=data
        ).path,
    }
    runners = {key: open_runner(path) for key, path in files.items()}
    x1 = data.x_test[:1]
    x256 = np.resize(data.x_test, (256, *data.input_shape)).astype(np.float32)
    say("timing batch 1 (Keras model(x) and every artifact, interleaved)")
    keras_b1 = median_seconds(lambda: model(x1), 200, warmup=10)
    b1 = interleaved_medians({key: (lambda r=r: r.predict(x1)) for key, r in runners.items()}, 2000, warmup=50)
    say("timing batch 256")
    keras_b256 = median_seconds(lambda: model(x256), 50, warmup=5)
    b256 = interleaved_medians({key: (lambda r=r: r.predict(x256)) for key, r in runners.items()}, 300, warmup=10)
    rows = []
    for (runtime, variant), s1 in b1.items():
        base1, base256 = b1[(runtime, "float32")], b256[(runtime, "float32")]
        rows.append(
            {
                "runtime": runtime,
                "variant": variant,
                "b1_ms": 1e3 * s1,
                "b256_ms": 1e3 * b256[(runtime, variant)],
                "b1_speedup_vs_float32": base1 / s1,
                "b256_speedup_vs_float32": base256 / b256[(runtime, variant)],
                "b1_speedup_vs_keras_call": keras_b1 / s1,
            }
        )
    ort_ratio = keras_b1 / b1[("onnxruntime", "float32")]
    return {
        "model": f"{data.num_features}-{'-'.join(map(str, HIDDEN))}-{data.num_classes} ({data.name})",
        "keras_call_b1_ms": 1e3 * keras_b1,
        "keras_call_b256_ms": 1e3 * keras_b256,
        "onnxruntime_float32_b1_ms": 1e3 * b1[("onnxruntime", "float32")],
        "onnxruntime_vs_keras_b1": ort_ratio,
        "latency_target": LATENCY_TARGET,
        "meets_latency_target": ort_ratio >= LATENCY_TARGET,
        "variants": rows,
    }


def main() -> int:
    from deploykit.data.dataset import load_dataset

    results = {"size": {}, "notes": []}
    datasets = {"digits": load_dataset("digits")}
    if FASHION.exists():
        datasets["fashion_mnist_3615"] = load_dataset(FASHION)
    else:
        message = f"skipped Fashion-MNIST: the sample {FASHION.name} is not in ../shared/data"
        results["notes"].append(message)
        say(message)
    models = {}
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as tmp:
        for name, data in datasets.items():
            results["size"][name], models[name] = size_case(name, data, Path(tmp))
        if "fashion_mnist_3615" in models:
            results["latency"] = latency_case(models["fashion_mnist_3615"], datasets["fashion_mnist_3615"], Path(tmp))
        else:
            results["notes"].append("latency measured on the digits 64-300-100-10 model (no Fashion-MNIST sample)")
            results["latency"] = latency_case(models["digits"], datasets["digits"], Path(tmp))
    results["seconds"] = time.monotonic() - T0
    write_results("export", results, to_markdown(results))
    return 0


def to_markdown(r: dict) -> str:
    lines = [
        "# Export benchmarks",
        "",
        f"## (a) Pruned ({SPARSITY:.0%}) + full-integer int8 TFLite vs the float32 Keras file",
        "",
        f"Targets: gzip size >= {SIZE_TARGET:g}x smaller than the Keras file; LiteRT accuracy within "
        f"{ACCURACY_POINTS:g} point "
        "of the original model. The ratio is the Keras file's bytes over the gzipped .tflite; TF-MOT's example gzips "
        "both "
        "(next column). Sparsity counts every Dense kernel (the output layer is not pruned).",
        "",
        "| data | model | Keras file KiB | float32 .tflite gzip KiB | pruned int8 .tflite gzip KiB | ratio | ratio, "
        "both gzipped | "
        "sparsity | accuracy original | pruned (Keras) | pruned int8 (LiteRT) | drop (pt) | int8 agrees with original "
        "| targets |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in r["size"].items():
        ok = (
            "met"
            if s["meets_size_target"] and s["meets_accuracy_target"]
            else (
                "size "
                + ("met" if s["meets_size_target"] else "MISSED")
                + ", accuracy "
                + ("met" if s["meets_accuracy_target"] else "MISSED")
            )
        )
        lines.append(
            f"| {name} | {s['model']} | {s['keras_file_bytes'] / 1024:.1f} | "
            f"{s['float32_tflite_gzip_bytes'] / 1024:.1f} | "
            f"{s['pruned_int8_tflite_gzip_bytes'] / 1024:.1f} | {s['size_ratio']:.1f}x | "
            f"{s['gzip_vs_gzip_ratio']:.1f}x | {s['sparsity']:.3f} | "
            f"{s['accuracy_original']:.4f} | {s['accuracy_pruned_keras']:.4f} | {s['accuracy_pruned_int8_litert']:.4f} "
            "| "
            f"{s['accuracy_drop_points']:+.2f} | {s['agreement_int8_vs_original']:.2%} | {ok} |"
        )
    lat = r["latency"]
    lines += [
        "",
        f"## (b) onnxruntime float32 vs calling the tf_keras model, batch 1 ({lat['model']})",
        "",
        f"`model(x)`: {lat['keras_call_b1_ms']:.3f} ms; onnxruntime float32: {lat['onnxruntime_float32_b1_ms']:.4f} "
        "ms; "
        f"**{lat['onnxruntime_vs_keras_b1']:.0f}x** faster (target >= {LATENCY_TARGET:g}x: "
        f"{'met' if lat['meets_latency_target'] else 'MISSED'}).",
        "",
        "## (c) Quantized vs float32 latency, as measured on this CPU",
        "",
        "| runtime | variant | batch 1 ms | batch 256 ms | b1 vs float32 | b256 vs float32 | b1 vs model(x) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    slower = []
    for v in lat["variants"]:
        lines.append(
            f"| {v['runtime']} | {v['variant']} | {v['b1_ms']:.4f} | {v['b256_ms']:.3f} | "
            f"{v['b1_speedup_vs_float32']:.2f}x | "
            f"{v['b256_speedup_vs_float32']:.2f}x | {v['b1_speedup_vs_keras_call']:.0f}x |"
        )
        for batch in ("b1", "b256"):
            if v[f"{batch}_speedup_vs_float32"] < 0.95:
                slower.append(
                    f"- {v['runtime']} {v['variant']} is slower than float32 at batch {batch[1:]} "
                    f"({v[f'{batch}_speedup_vs_float32']:.2f}x)."
                )
    if slower:
        lines += ["", "Slower than float32 on this CPU (ratios below 0.95):", "", *slower]
    if r["notes"]:
        lines += ["", "Notes:", "", *(f"- {n}" for n in r["notes"])]
    lines += ["", f"Total run time: {r['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
