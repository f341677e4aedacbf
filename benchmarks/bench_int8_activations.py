"""int8-static ONNX with int8 vs uint8 activations (``QuantConfig.activation_type``), side by side (issue 23).

onnxruntime's static quantizer writes either; which one is fast depends on the CPU: with int8 dot-product
instructions (AVX-512 VNNI, AVX-VNNI, AMX) its u8 x s8 kernels are the fast path, on AVX2 alone u8 x s8 sums pairs
in 16 bits and can saturate. ``activation_type="auto"`` (the default) picks uint8 only where the CPU has them. This
script measures both types on the same models, trained briefly on the Fashion sample (``../shared``; else random
images, where only the speed figures mean something), all built in Keras 3 as users build them:

- the book's MLP (784-300-100-10, ELU),
- the keras.io "Simple MNIST convnet" (32 / 64 filters) and the same at the widths structured pruning keeps at 50 %
  (16 / 32),
- MobileNetV2 (alpha 0.35, 96x96, ``weights=None``, the images upscaled as ``bench_faster.py`` does).

Each is exported by deploykit as float32 and as int8-static with each activation type (the same 300 calibration
rows), then timed in onnxruntime, 1 intra-op thread, interleaved, fastest call, at batch 1 and 256, and scored on
the test rows no training or calibration saw (Δ accuracy vs the float32 file with its paired 95% interval).
Writes ``benchmarks/results/int8_activations.json`` and ``.md``::

    python benchmarks/bench_int8_activations.py [--models mlp,kerasio,kerasio50,mobilenet]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_faster import MOBILENET_BN_MOMENTUM, MOBILENET_ROWS, images, keras_io_convnet, mobilenet, upscaled
from common import RESULTS, accuracy_change, write_results

TITLES = {
    "mlp": "book MLP (300/100, ELU)",
    "kerasio": "keras.io convnet (32/64)",
    "kerasio50": "keras.io convnet at 50 % structured (16/32)",
    "mobilenet": "MobileNetV2 0.35, 96x96",
}
EPOCHS = {"mlp": 5, "kerasio": 5, "kerasio50": 5, "mobilenet": 15}
TEST_SHARE, CALIBRATION = 0.2, 300
REPEATS_B1, REPEATS_B256, SECONDS = 50, 5, 2.0


def build(key: str, keras):
    """The model of ``key``, untrained."""
    layers = keras.layers
    if key == "mlp":
        return keras.Sequential(
            [keras.Input((28, 28, 1)), layers.Flatten()]
            + [layers.Dense(300, activation="elu"), layers.Dense(100, activation="elu")]
            + [layers.Dense(10, activation="softmax")]
        )
    if key == "kerasio50":
        return keras.Sequential(
            [keras.Input((28, 28, 1)), layers.Rescaling(1 / 255.0)]
            + [layers.Conv2D(16, 3, activation="relu"), layers.MaxPooling2D()]
            + [layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D()]
            + [layers.Flatten(), layers.Dropout(0.5), layers.Dense(10, activation="softmax")]
        )
    return {"kerasio": keras_io_convnet, "mobilenet": mobilenet}[key](keras)


def split(key: str):
    """(x_train, y_train, x_test, y_test, source): the last TEST_SHARE of the rows are the test rows."""
    x, y, source = images()
    if key == "mobilenet":
        x, y = upscaled(x[:MOBILENET_ROWS]), y[:MOBILENET_ROWS]
    elif key == "mlp":
        x = x / 255.0
    cut = int(len(x) * (1 - TEST_SHARE))
    return x[:cut], y[:cut], x[cut:], y[cut:], source


def files(key: str, folder: Path) -> tuple[dict[str, Path], np.ndarray, np.ndarray, str, str]:
    """({label: ONNX file}, x_test, y_test, data source, training) of one model."""
    import keras

    from deploykit.export import export_onnx
    from deploykit.export.config import QuantConfig

    x, y, x_test, y_test, source = split(key)
    keras.utils.set_random_seed(0)
    model = build(key, keras)
    for layer in model.layers:  # keras.applications' momentum (0.999) leaves inference-mode BN at chance after
        if isinstance(layer, keras.layers.BatchNormalization):  # a few epochs on 1,200 rows (bench_faster's setting)
            layer.momentum = MOBILENET_BN_MOMENTUM
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=EPOCHS[key], batch_size=32, verbose=0)
    path = folder / f"{key}.keras"
    model.save(path)
    calibration = (x[:CALIBRATION], y[:CALIBRATION])
    out = {"float32": export_onnx(str(path), folder / f"{key}_f32.onnx", quantization="float32").path}
    for kind in ("int8", "uint8"):
        out[f"int8-static, {kind} activations"] = export_onnx(
            str(path),
            folder / f"{key}_{kind}.onnx",
            quantization="int8-static",
            calibration_data=calibration,
            config=QuantConfig(activation_type=kind),
        ).path
    return out, x_test, y_test, source, f"{EPOCHS[key]} epochs on {len(x)} rows"


def measured(key: str) -> dict:
    """The model's rows: accuracy and b1 / b256 speed of each file."""
    import onnxruntime as ort

    from deploykit.export.runtimes import interleaved_fastest

    with tempfile.TemporaryDirectory() as tmp:
        paths, x_test, y_test, source, training = files(key, Path(tmp))
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        sessions = {
            k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()
        }
        name = sessions["float32"].get_inputs()[0].name
        correct = {k: s.run(None, {name: x_test})[0].argmax(-1) == y_test for k, s in sessions.items()}
        times = {}
        for batch, repeats in ((1, REPEATS_B1), (256, REPEATS_B256)):
            xb = np.resize(x_test, (batch, *x_test.shape[1:])).astype(np.float32)
            calls = {k: (lambda s=s, xb=xb: s.run(None, {name: xb})) for k, s in sessions.items()}
            times[batch] = interleaved_fastest(calls, repeats, SECONDS)
    rows = []
    for label in paths:
        rows.append(
            {
                **accuracy_change(correct, label),
                "b1_ms": times[1][label] * 1e3,
                "b256_ms": times[256][label] * 1e3,
                "b1_speedup": times[1]["float32"] / times[1][label],
                "b256_speedup": times[256]["float32"] / times[256][label],
            }
        )
    return {
        "model": TITLES[key],
        "key": key,
        "training": training,
        "test_rows": len(y_test),
        "rows": rows,
        "data": source,
    }


def render(runs: list[dict], cpu: str) -> str:
    lines = [
        "# int8-static ONNX: int8 vs uint8 activations (issue 23)",
        "",
        f"CPU: {cpu}. onnxruntime, 1 intra-op thread, graph optimizations on; fastest of interleaved calls. "
        "Speed-up: the same model's float32 file over the row's (> 1: faster). Δ: test accuracy vs the float32 "
        "file on rows no training or calibration saw, paired 95% interval. Each model trained briefly here (Keras 3).",
        "",
        "| model | file | test accuracy | Δ vs float32 [95% CI] | b1 µs | b256 ms | b1 / b256 speed-up |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for run in runs:
        for r in run["rows"]:
            d = r["delta"]
            lines.append(
                f"| {run['model']} | {r['file']} | {r['accuracy']:.1%} | {d[0] * 100:+.2f} pt [{d[1] * 100:+.2f}, "
                f"{d[2] * 100:+.2f}] | {r['b1_ms'] * 1e3:.1f} | {r['b256_ms']:.2f} | "
                f"{r['b1_speedup']:.2f}x / {r['b256_speedup']:.2f}x |"
            )
    trained = "; ".join(f"{run['model']}: {run['training']}, {run['test_rows']} test rows" for run in runs)
    return "\n".join([*lines, "", f"Data: {runs[0]['data'] if runs else '—'}. Training: {trained}.", ""])


def main() -> None:
    from bench_int8_mlp import cpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TITLES), help="comma-separated: " + ", ".join(TITLES))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    args = parser.parse_args()
    runs, start = [], time.perf_counter()
    for key in (k.strip() for k in args.models.split(",") if k.strip()):
        print(f"--- {TITLES[key]}", flush=True)
        runs.append(measured(key))
    data = {"cpu": cpu(), "seconds": time.perf_counter() - start, "runs": runs}
    write_results("int8_activations", data, render(runs, data["cpu"]), args.out)


if __name__ == "__main__":
    main()
