"""Graph-core benchmark: BatchNorm folding on MobileNetV2 (depthwise + pointwise convolutions, residual Adds).

``keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)``
with random non-trivial BatchNorm statistics (no download): ``fold_batchnorm``
folds every BatchNormalization into the convolution before it. Reported side
by side in one run:

- fold exactness: max |output difference| (tf_keras, 1000 probe inputs; and
  the folded ONNX vs the unfolded Keras model on 16 inputs);
- BatchNormalization nodes / total nodes in each exported ONNX graph (tf2onnx
  already fuses some BN patterns itself: the table shows what is left);
- onnxruntime float32 batch-1 latency of the folded vs the unfolded ONNX
  (median of interleaved runs, 1 intra-op thread and the default), as a ratio.

Writes ``benchmarks/results/graph.json`` and ``graph.md``.
Run: ``python benchmarks/bench_graph.py [--repeats 200]`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
from common import write_results  # noqa: E402  (puts the repository on sys.path)

from deploykit.backend import keras, set_seed  # noqa: E402
from deploykit.export.convert import INPUT_NAME, keras_to_onnx  # noqa: E402
from deploykit.export.runtimes import interleaved_medians  # noqa: E402
from deploykit.fold import fold_batchnorm  # noqa: E402
from tests.helpers import randomize_batchnorm  # noqa: E402

INPUT = (96, 96, 3)
ALPHA = 0.35


def session(proto, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()

    set_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=INPUT, alpha=ALPHA, classes=10)
    randomize_batchnorm(model, 0)
    folded, report = fold_batchnorm(model)
    protos = {"unfolded": keras_to_onnx(model), "folded": keras_to_onnx(folded)}
    x1 = np.random.default_rng(1).normal(size=(1, *INPUT)).astype(np.float32)
    x16 = np.random.default_rng(2).normal(size=(16, *INPUT)).astype(np.float32)
    reference = model(x16, training=False).numpy()
    ops = {name: collections.Counter(n.op_type for n in proto.graph.node) for name, proto in protos.items()}
    onnx_diff = float(np.abs(session(protos["folded"], None).run(None, {INPUT_NAME: x16})[0] - reference).max())
    latency = {}
    for label, threads in (("1 thread", 1), ("default threads", None)):
        sessions = {name: session(proto, threads) for name, proto in protos.items()}
        medians = interleaved_medians(
            {name: (lambda s=s: s.run(None, {INPUT_NAME: x1})) for name, s in sessions.items()}, args.repeats
        )
        latency[label] = {name: medians[name] * 1e3 for name in protos}
    data = {
        "model": f"MobileNetV2(weights=None, input_shape={INPUT}, alpha={ALPHA}, classes=10), random BN statistics",
        "bn_layers": sum(type(l).__name__ == "BatchNormalization" for l in model.layers),
        "folded": len(report.folded),
        "unfolded": [u.to_dict() for u in report.unfolded],
        "params_before": report.params_before,
        "params_after": report.params_after,
        "fold_max_abs_diff_keras": report.max_abs_diff,
        "folded_onnx_vs_keras_max_abs_diff": onnx_diff,
        "onnx_ops": {name: dict(c) for name, c in ops.items()},
        "latency_b1_ms": latency,
        "latency_ratio_unfolded_over_folded": {k: v["unfolded"] / v["folded"] for k, v in latency.items()},
        "repeats": args.repeats,
    }
    rows = [
        f"| {label} | {v['unfolded']:.3f} | {v['folded']:.3f} | {v['unfolded'] / v['folded']:.2f}x |"
        for label, v in latency.items()
    ]
    bn_nodes = {name: sum(v for k, v in c.items() if "BatchNorm" in k) for name, c in ops.items()}
    md = "\n".join(
        [
            "# Graph core: BatchNorm folding on MobileNetV2",
            "",
            data["model"] + ".",
            "",
            f"- folded {data['folded']} of {data['bn_layers']} BatchNormalization layers; parameters "
            f"{data['params_before']:,} -> {data['params_after']:,}",
            f"- fold max |output difference| (tf_keras, {report.probe_samples} inputs): {report.max_abs_diff:.3g}; "
            f"folded ONNX vs unfolded Keras (16 inputs): {onnx_diff:.3g}",
            f"- ONNX nodes: unfolded {sum(ops['unfolded'].values())} ({bn_nodes['unfolded']} BatchNormalization), "
            f"folded {sum(ops['folded'].values())} ({bn_nodes['folded']} BatchNormalization)",
            "",
            "onnxruntime float32, batch 1, median ms:",
            "",
            "| threads | unfolded | folded | unfolded / folded |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    write_results("graph", data, md)


if __name__ == "__main__":
    main()
