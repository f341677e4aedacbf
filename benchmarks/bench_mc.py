"""MC Dropout ONNX vs the chapter's Keras loop, and the sampling overhead.

The chapter's 784-300-100-10 model (Flatten, Dropout(0.2) before every Dense,
ELU, softmax), trained briefly on the Fashion-MNIST sample; the same weights
with dropout on the hidden layers only (not on the input), and with dropout
only before the top Dense layer. For one instance and T = 100 samples it times:

- the chapter's loop: 100 calls of ``model(x, training=True)``;
- one call of the MC ONNX model (T = 100) through ``UncertaintyPredictor``;
- one plain onnxruntime call of the deterministic ONNX model (tf2onnx) on a
  batch of T rows: the same arithmetic without the sampling.

onnxruntime is timed with 1 intra-op thread and with its default. Writes
``benchmarks/results/mc.json`` and ``mc.md``. Run: ``python benchmarks/bench_mc.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from common import FASHION as DATA  # noqa: E402  (puts the repository on sys.path)
from common import write_results

from deploykit.export.runtimes import interleaved_medians  # noqa: E402

T = 100
KERAS_TARGET = 500.0  # MC ONNX at least this many times faster than the Keras loop
OVERHEAD_TARGET = 1.5  # MC call at most this many times a deterministic call on T rows
VARIANTS = {  # name -> (dropout on the input, dropout after the 300-unit layer); always before the top layer
    "dropout_all_layers (chapter)": (True, True),
    "dropout_hidden_layers": (False, True),
    "dropout_top_layer_only": (False, False),
}
THREADS = {"1 thread": 1, "default threads": None}


def chapter_model(keras, input_dropout: bool = True, hidden_dropout: bool = True):
    def drop(on: bool):
        return [keras.layers.Dropout(0.2)] if on else []

    return keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Flatten(),
            *drop(input_dropout),
            keras.layers.Dense(300, activation="elu", kernel_initializer="he_normal"),
            *drop(hidden_dropout),
            keras.layers.Dense(100, activation="elu", kernel_initializer="he_normal"),
            *drop(True),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def main() -> int:
    if not DATA.exists():
        print(f"skipped: the Fashion-MNIST sample {DATA.name} is not at {DATA.parent}", file=sys.stderr)
        return 0
    import onnxruntime as ort

    from deploykit.backend import keras, set_seed
    from deploykit.export.convert import keras_to_onnx
    from deploykit.uncertainty import UncertaintyPredictor, export_mc_onnx

    with np.load(DATA) as npz:
        x_all, y_all = npz["x"].astype(np.float32) / 255.0, npz["y"].astype(np.int64)
    set_seed(42)
    model = chapter_model(keras)
    model.compile(optimizer=keras.optimizers.Nadam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_all[:3000], y_all[:3000], epochs=3, batch_size=32, verbose=0)
    x1 = x_all[3000:3001]
    batch = np.repeat(x1, T, axis=0)
    keras_loop = {"keras": lambda: np.stack([model(x1, training=True) for _ in range(T)])}  # the chapter's loop
    keras_s = interleaved_medians(keras_loop, 5, warmup=1)["keras"]
    results = {"samples": T, "keras_loop_ms": keras_s * 1e3, "threads": {}, "layers_run_once": {}}
    det_proto = keras_to_onnx(model).SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, flags in VARIANTS.items():
            net = chapter_model(keras, *flags)
            net.set_weights(model.get_weights())  # dropout layers hold no weights: the same Dense weights
            paths[name] = Path(tmp) / f"{len(paths)}.onnx"
            results["layers_run_once"][name] = export_mc_onnx(net, paths[name], samples=T).layers_run_once
        for label, threads in THREADS.items():
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            det = ort.InferenceSession(det_proto, options, providers=["CPUExecutionProvider"])
            calls = {"deterministic": lambda det=det: det.run(None, {"input": batch})}
            for name, path in paths.items():
                predictor = UncertaintyPredictor(path, threads=threads)
                calls[name] = lambda predictor=predictor: predictor.predict(x1)
            secs = interleaved_medians(calls, 300)
            det_s = secs.pop("deterministic")
            results["threads"][label] = {
                "deterministic_batch_T_ms": det_s * 1e3,
                "variants": {
                    name: {
                        "mc_call_ms": s * 1e3,
                        "speedup_vs_keras_loop": keras_s / s,
                        "overhead_vs_deterministic_batch": s / det_s,
                    }
                    for name, s in secs.items()
                },
            }

    write_results("mc", results, to_markdown(results))
    return 0


def to_markdown(r: dict) -> str:
    lines = [
        f"# MC Dropout: one onnxruntime call vs the chapter's Keras loop (T = {r['samples']}, one instance)",
        "",
        f"Chapter's Keras loop ({r['samples']} calls of `model(x, training=True)`): {r['keras_loop_ms']:.1f} ms.",
        "",
        f"| onnxruntime | variant | layers run once | MC call (ms) | deterministic on T rows (ms) | "
        f"speed-up vs Keras loop (target >= {KERAS_TARGET:g}x) | MC / deterministic (target <= {OVERHEAD_TARGET:g}x) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in r["threads"].items():
        for name, v in row["variants"].items():
            lines.append(
                f"| {label} | {name} | {r['layers_run_once'][name]} | {v['mc_call_ms']:.3f} | "
                f"{row['deterministic_batch_T_ms']:.3f} | {v['speedup_vs_keras_loop']:.0f}x | "
                f"{v['overhead_vs_deterministic_batch']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
