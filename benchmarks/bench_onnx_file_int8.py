"""int8 from a float32 ONNX file: bare onnxruntime against deploykit's ONNX preparation, side by side (issue 23).

``deploykit export model.onnx --quantize int8-static`` used to run onnxruntime's quantizers on the file as it is. It
now prepares the graph first (``deploykit.export.onnx_int8_prep``: the weight clip search with bias correction on
every Gemm / MatMul / Conv, and, where the export's recovery tries it, a float standardization of the first Dense
layer's input). This script writes, from the same float32 ONNX file and the same 300 calibration rows:

- ``bare``: onnxruntime's quantizer on the file as it is (what deploykit did before),
- ``prepared``: ``quantize_onnx_file`` (the clip search),
- ``standardized``: the same with ``standardize_input`` (what the recovery tries when the first kernel is a Dense),

for int8-static (QDQ, activations as ``auto`` picks on this CPU) and int8-dynamic, and scores each on test rows
no training or calibration saw (Δ accuracy vs the float32 file, paired 95% interval) and times it at batch 256 in
onnxruntime, 1 thread (vs the float32 file). The models are built as users build them, in Keras 3, saved with
``model.save`` and exported to float32 ONNX by deploykit:

- ``tabular``: the Keras tutorial's structured-data recipe on breast_cancer (scikit-learn's, embedded):
  Normalization adapted on the raw features, Dense 16 ReLU, sigmoid head; its ONNX file as exported (``tabular``)
  and after ``deploykit fold`` (``tabular-folded``: the Normalization folded into the first kernel);
- ``book``: the stored book network (``../shared``), folded, as ``deploykit optimize`` writes ``original.onnx``;
- ``kerasio``, ``mobilenet``: ``bench_faster.py``'s convnets, trained briefly on the Fashion sample.

::

    python benchmarks/bench_onnx_file_int8.py [--models tabular,tabular-folded,book,kerasio,mobilenet]

Writes ``benchmarks/results/onnx_file_int8.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_faster import BOOK, MOBILENET_BN_MOMENTUM, images, keras_io_convnet, mobilenet, upscaled
from common import FASHION, accuracy_change, write_results

MODELS = ("tabular", "tabular-folded", "book", "kerasio", "mobilenet")
CALIBRATION, TEST_SHARE, SECONDS = 300, 0.2, 2.0
MOBILENET_ROWS, EPOCHS = 1200, {"tabular": 30, "kerasio": 4, "mobilenet": 15}


def tabular(keras, x: np.ndarray):
    """The Keras tutorial's recipe: Normalization adapted on the raw training features, Dense 16 ReLU, sigmoid."""
    norm = keras.layers.Normalization()
    norm.adapt(x)
    layers = [keras.Input(x.shape[1:]), norm, keras.layers.Dense(16, activation="relu")]
    return keras.Sequential([*layers, keras.layers.Dense(1, activation="sigmoid")])


def data_of(key: str):
    """(x_train, y_train, x_test, y_test): the last TEST_SHARE of the rows are the test rows."""
    if key.startswith("tabular"):
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(x))
        x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    else:
        x, y, _ = images()
        if key == "mobilenet":
            x, y = upscaled(x[:MOBILENET_ROWS]), y[:MOBILENET_ROWS]
        elif key == "book":
            x = x[..., 0]
    cut = int(len(x) * (1 - TEST_SHARE))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def float_file(key: str, folder: Path, x: np.ndarray, y: np.ndarray) -> tuple[Path, str]:
    """(the float32 ONNX file deploykit writes for the model of ``key``, how it was trained)."""
    import keras

    from deploykit.export import export_onnx
    from deploykit.fold import fold_batchnorm

    if key == "book":
        from deploykit.io.models import load_model

        model, training = load_model(BOOK), "the stored book network"
    else:
        keras.utils.set_random_seed(0)
        base = key.removesuffix("-folded")
        model = {"tabular": lambda: tabular(keras, x), "kerasio": lambda: keras_io_convnet(keras)}.get(
            base, lambda: mobilenet(keras)
        )()
        for layer in model.layers:  # keras.applications' BN momentum (0.999) leaves inference-mode BN at chance
            if isinstance(layer, keras.layers.BatchNormalization):  # after a few epochs (bench_faster's setting)
                layer.momentum = MOBILENET_BN_MOMENTUM
        loss = "binary_crossentropy" if base == "tabular" else "sparse_categorical_crossentropy"
        model.compile(keras.optimizers.Adam(1e-3), loss)
        model.fit(x, y, epochs=EPOCHS[base], batch_size=32, verbose=0)
        model.save(folder / f"{key}.keras")
        model, training = str(folder / f"{key}.keras"), f"{EPOCHS[base]} epochs on {len(x)} rows"
    if key.endswith("-folded") or key == "book":
        from deploykit.io.models import load_model

        model = fold_batchnorm(load_model(model) if isinstance(model, str) else model)[0]
    return export_onnx(model, folder / f"{key}.onnx", quantization="float32").path, training


def variants(source: Path, folder: Path, calibration: np.ndarray) -> dict[str, tuple[Path, float]]:
    """{label: (int8 file, seconds to write it)} of the three settings x two variants."""
    import onnx

    from deploykit.export.config import QuantConfig, Quantization
    from deploykit.export.onnx_export import quantize_onnx_file, quantize_proto

    out = {}
    for variant in ("int8-static", "int8-dynamic"):
        quant, knobs = Quantization(variant), QuantConfig()
        start = time.perf_counter()
        bare = quantize_proto(onnx.load(str(source)), quant, calibration, knobs.for_variant(quant))
        onnx.save(bare, str(folder / f"bare_{variant}.onnx"))
        out[f"{variant}, bare"] = (folder / f"bare_{variant}.onnx", time.perf_counter() - start)
        for label, config in (
            ("prepared", knobs),
            ("standardized", dataclasses.replace(knobs, standardize_input=True)),
        ):
            start = time.perf_counter()
            path = quantize_onnx_file(source, folder / f"{label}_{variant}.onnx", variant, calibration, config=config)
            out[f"{variant}, {label}"] = (path.path, time.perf_counter() - start)
    return out


def measured(key: str) -> dict:
    """One model's rows: Δ accuracy (interval) and b256 speed-up of each int8 file vs the float32 file."""
    import onnxruntime as ort

    from deploykit.export.runtimes import interleaved_fastest

    x, y, x_test, y_test = data_of(key)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source, training = float_file(key, folder, x, y)
        files = variants(source, folder, x[:CALIBRATION])
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        paths = {"float32": source, **{k: p for k, (p, _) in files.items()}}
        sessions = {
            k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()
        }
        name = sessions["float32"].get_inputs()[0].name
        main = {k: next(o.name for o in s.get_outputs() if o.name == "probabilities") for k, s in sessions.items()}
        correct = {k: s.run([main[k]], {name: x_test})[0].argmax(-1) == y_test for k, s in sessions.items()}
        xb = np.resize(x_test, (256, *x_test.shape[1:])).astype(np.float32)
        times = interleaved_fastest({k: (lambda s=s: s.run(None, {name: xb})) for k, s in sessions.items()}, 5, SECONDS)
    rows = []
    for label in files:
        rows.append(
            {
                **accuracy_change(correct, label),
                "b256_speedup": times["float32"] / times[label],
                "seconds": files[label][1],
            }
        )
    return {
        "model": key,
        "training": training,
        "float32": float(correct["float32"].mean()),
        "test_rows": len(y_test),
        "rows": rows,
    }


def markdown(runs: list[dict]) -> str:
    lines = [
        "# int8 from a float32 ONNX file: bare onnxruntime vs deploykit's preparation",
        "",
        "`python benchmarks/bench_onnx_file_int8.py`; the same float32 file and 300 calibration rows per model; Δ on "
        "test rows no training or calibration saw (paired 95% interval); b256: onnxruntime, 1 thread, vs float32.",
        "",
        "| model | float32 acc | file | Δ acc (pt) [95% CI] | b256 vs float32 | s to write |",
        "|---|---:|---|---|---:|---:|",
    ]
    for run in runs:
        for k, row in enumerate(run["rows"]):
            head = f"{run['model']} ({run['test_rows']} test rows)" if k == 0 else ""
            acc = f"{run['float32']:.2%}" if k == 0 else ""
            est, low, high = (100 * v for v in row["delta"])
            lines.append(
                f"| {head} | {acc} | {row['file']} | {est:+.2f} [{low:+.2f}, {high:+.2f}] "
                f"| {row['b256_speedup']:.2f}x | {row['seconds']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    keys = [k for k in args.models.split(",") if k]
    if not FASHION.exists():
        keys = [k for k in keys if k.startswith("tabular")]  # the others need the Fashion sample
    runs = [measured(k) for k in keys]
    write_results("onnx_file_int8", {"runs": runs}, markdown(runs))


if __name__ == "__main__":
    main()
