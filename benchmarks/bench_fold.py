"""BatchNorm folding benchmark: the chapter's 784-300-100-10 model with BatchNormalization.

Measures inference time before and after ``fold_batchnorm`` in tf_keras
(``model(x, training=False)``), onnxruntime (tf2onnx export) and LiteRT
(``TFLiteConverter`` float32), at batch 1 and 256 (median of repeated runs, one
thread), plus the op counts of each exported graph: both converters already
fold some BatchNorm patterns themselves, and the table shows where folding
beforehand changes nothing.

The BN statistics come from a brief training on the Fashion-MNIST sample at
``../shared/data/fashion_mnist_3615.npz`` (from the repository root) when it
is present; otherwise random non-trivial statistics are used (said in the
results). Writes ``benchmarks/results/fold.json`` and ``fold.md``.

    python benchmarks/bench_fold.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import collections
import sys

import numpy as np
from common import FASHION as DATA  # noqa: E402  (puts the repository on sys.path)
from common import write_results

from deploykit.backend import keras, set_seed, tf  # noqa: E402
from deploykit.export.convert import INPUT_NAME, keras_to_onnx  # noqa: E402
from deploykit.export.runtimes import median_seconds  # noqa: E402
from deploykit.fold import fold_batchnorm  # noqa: E402

BATCHES = (1, 256)


def chapter_model():
    """Hands-On ML ch. 11: BatchNormalization first and after each hidden Dense."""
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            L.Flatten(),
            L.BatchNormalization(),
            L.Dense(300, activation="elu", kernel_initializer="he_normal"),
            L.BatchNormalization(),
            L.Dense(100, activation="elu", kernel_initializer="he_normal"),
            L.BatchNormalization(),
            L.Dense(10, activation="softmax"),
        ],
        name="chapter_bn",
    )


def prepared_model():
    """The model with real (trained) or random BN statistics, and test inputs with labels (or None)."""
    set_seed(42)
    model = chapter_model()
    if DATA.exists():
        data = np.load(DATA)
        x, y = data["x"].astype("float32") / 255.0, data["y"].astype("int64")
        model.compile(
            optimizer=keras.optimizers.SGD(1e-2, momentum=0.9),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.fit(x[:3000], y[:3000], epochs=3, batch_size=32, verbose=0)
        return model, x[3000:], y[3000:], f"trained 3 epochs on {DATA.name} (first 3000 images)"
    print(f"note: {DATA.name} not found beside the repository; using random BN statistics", file=sys.stderr)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.5, n), rng.normal(0.3, 0.5, n), rng.uniform(0.2, 3.0, n)]
            )
    x = rng.uniform(0, 1, (615, 28, 28)).astype("float32")
    return model, x, None, "random BN statistics (data sample absent)"


def keras_runner(model, x):
    xt = tf.constant(x)
    return lambda: model(xt, training=False)


def onnx_runner(proto, x):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {INPUT_NAME: x})[0]


def tflite_bytes(model) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def tflite_runner(content: bytes, x):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content, num_threads=1)
    inp = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(inp, x.shape)
    interp.allocate_tensors()
    out = interp.get_output_details()[0]["index"]

    def run():
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(out)

    return run


def onnx_ops(proto) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in proto.graph.node).items()))


def tflite_ops(content: bytes) -> dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter

    ops = Interpreter(model_content=content)._get_ops_details()
    return dict(sorted(collections.Counter(op["op_name"] for op in ops).items()))


def measure(model, x_test, repeats: int) -> dict:
    proto, lite = keras_to_onnx(model), tflite_bytes(model)
    out = {
        "params": int(model.count_params()),
        "onnx_ops": onnx_ops(proto),
        "tflite_ops": tflite_ops(lite),
        "onnx_bytes": len(proto.SerializeToString()),
        "tflite_bytes": len(lite),
        "ms": {},
    }
    makers = {
        "tf_keras": lambda b: keras_runner(model, b),
        "onnxruntime": lambda b: onnx_runner(proto, b),
        "litert": lambda b: tflite_runner(lite, b),
    }
    for runtime, make in makers.items():
        for batch in BATCHES:
            xb = np.ascontiguousarray(x_test[np.arange(batch) % len(x_test)])
            reps = repeats if batch == 1 else max(20, repeats // 5)
            out["ms"][f"{runtime}/b{batch}"] = round(
                1000 * median_seconds(make(xb), reps, warmup=max(3, reps // 10)), 4
            )
    out["outputs"] = {
        "tf_keras": model(x_test, training=False).numpy(),
        "onnxruntime": onnx_runner(proto, x_test)(),
        "litert": tflite_runner(lite, x_test)(),
    }
    return out


def markdown(result: dict) -> str:
    b, a = result["before"], result["after"]
    lines = [
        "# BatchNorm folding benchmark",
        "",
        f"Model: the chapter's 784-300-100-10 with BatchNormalization first and after each hidden Dense; "
        f"{result['stats']}. One thread, median of repeated runs. Host: {result['host']}.",
        "",
        f"Parameters {b['params']:,} -> {a['params']:,}; folded: {', '.join(result['folded'])}. "
        f"Largest output difference after folding: tf_keras {result['max_abs_diff']['tf_keras']:.2g}, "
        f"onnxruntime {result['max_abs_diff']['onnxruntime']:.2g}, LiteRT {result['max_abs_diff']['litert']:.2g} "
        "(each folded runtime against the unfolded tf_keras model).",
        "",
    ]
    if result.get("accuracy"):
        acc = result["accuracy"]
        lines += [
            f"Accuracy on the held-out 615 sample images: {acc['before']:.4f} before, {acc['after']:.4f} after.",
            "",
        ]
    lines += ["| runtime / batch | before (ms) | after (ms) | after / before |", "|---|---:|---:|---:|"]
    for key, ratio in result["ratios"].items():
        lines.append(f"| {key} | {b['ms'][key]:.4f} | {a['ms'][key]:.4f} | {ratio:.3f} |")
    lines += ["", "| exported graph | ops before | ops after |", "|---|---|---|"]
    for fmt in ("onnx", "tflite"):
        fmt_ops = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
        lines.append(f"| {fmt} | {fmt_ops(b[f'{fmt}_ops'])} | {fmt_ops(a[f'{fmt}_ops'])} |")
    lines += [
        "",
        f"Sizes: ONNX {b['onnx_bytes']:,} -> {a['onnx_bytes']:,} bytes; "
        f"TFLite {b['tflite_bytes']:,} -> {a['tflite_bytes']:,} bytes.",
        "",
        "## Reading",
        "",
        *result["notes"],
        "",
    ]
    return "\n".join(lines)


def notes(result: dict) -> list[str]:
    b, a, r = result["before"], result["after"], result["ratios"]
    out = []
    for fmt, name in (("onnx", "tf2onnx"), ("tflite", "the TFLite converter")):
        nb, na = sum(b[f"{fmt}_ops"].values()), sum(a[f"{fmt}_ops"].values())
        out.append(
            f"- {name}: {nb} ops before, {na} after"
            + (
                " - the converter had already folded the BatchNorm arithmetic, so folding changes "
                "nothing in this graph."
                if nb == na
                else f" ({nb - na} BatchNorm ops removed by folding)."
            )
        )
    for key, ratio in r.items():
        if abs(ratio - 1) < 0.05:
            out.append(f"- {key}: within 5% (ratio {ratio:.3f}): no measurable change.")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200, help="timed runs at batch 1 (batch 256: a fifth)")
    args = p.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    model, x_test, y_test, stats = prepared_model()
    folded, report = fold_batchnorm(model)
    before, after = measure(model, x_test, args.repeats), measure(folded, x_test, args.repeats)
    reference = before["outputs"]["tf_keras"]
    result = {
        "model": "784-300-100-10, BN first and after each hidden Dense",
        "stats": stats,
        "host": f"{sys.platform}, Python {sys.version.split()[0]}, TF {tf.__version__}",
        "folded": [f"{f.name} ({f.placement.value} into {f.target})" for f in report.folded],
        "fold_report": report.to_dict(),
        "max_abs_diff": {k: float(np.abs(v - reference).max()) for k, v in after["outputs"].items()},
        "before": {k: v for k, v in before.items() if k != "outputs"},
        "after": {k: v for k, v in after.items() if k != "outputs"},
        "ratios": {k: round(after["ms"][k] / before["ms"][k], 4) for k in before["ms"]},
    }
    if y_test is not None:
        result["accuracy"] = {
            "before": float(np.mean(reference.argmax(1) == y_test)),
            "after": float(np.mean(after["outputs"]["tf_keras"].argmax(1) == y_test)),
        }
    result["notes"] = notes(result)
    write_results("fold", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
