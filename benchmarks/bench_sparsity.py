"""Sparsity benchmark: dense vs 80%-pruned vs compacted, on digits and the Fashion-MNIST sample.

Measures, side by side in one run:
- test accuracy of the dense model and of the model pruned to 80% (target: within 1 point);
- gzip size of the saved pruned model vs the dense one (target: at most 1/3);
- compact: the multiply-adds (MACs) it removes vs the onnxruntime latency at batch 1 and 256
  (target: latency falls in proportion), on the pruned model and on an l1-sparsified one.

Writes benchmarks/results/sparsity.json and sparsity.md. Run from the repository root:

    python benchmarks/bench_sparsity.py
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from common import FASHION, write_results  # noqa: E402  (puts the repository on sys.path)

from deploykit.export.runtimes import interleaved_medians  # noqa: E402


def build(data, hidden=(300, 100)):
    """The chapter's MLP: [Flatten] -> Normalization -> Dense(300) -> Dense(100) -> Dense(C, softmax)."""
    from deploykit.backend import keras

    layers = [keras.Input(shape=data.input_shape)]
    if len(data.input_shape) > 1:
        layers.append(keras.layers.Flatten())
    layers.append(keras.layers.Normalization(mean=data.feature_mean, variance=np.maximum(data.feature_var, 1e-6)))
    layers += [keras.layers.Dense(width, activation="relu", kernel_initializer="he_normal") for width in hidden]
    layers.append(keras.layers.Dense(data.num_classes, activation="softmax"))
    return keras.Sequential(layers)


def train(data, epochs: int, seed: int = 42):
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    model = build(data)
    model.compile(optimizer=keras.optimizers.Nadam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(patience=10, restore_best_weights=True)
    model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=epochs,
        batch_size=32,
        verbose=0,
        callbacks=[stop],
    )
    return model


def dense_control(dense, data, args) -> float:
    """The dense model fine-tuned with the pruning run's budget (same epochs, rate, early stopping): a fair control."""
    from deploykit.core.evaluate import accuracy
    from deploykit.sparsity import PruneConfig
    from deploykit.sparsity.tuning import fine_tune, rebuild

    control = rebuild(dense)
    fine_tune(control, data, PruneConfig().with_options(epochs=args.prune_epochs, learning_rate=args.learning_rate))
    return accuracy(control, data.x_test, data.y_test)


def paired_latency_ms(models, x: np.ndarray, batch: int, repeats: int) -> list[float]:
    """Median onnxruntime latency (one thread) of one batch per model, in ms; runs interleaved so load drifts hit all
    alike."""
    import onnxruntime as ort

    from deploykit.export.convert import INPUT_NAME, keras_to_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(keras_to_onnx(m).SerializeToString(), options, providers=["CPUExecutionProvider"])
        for m in models
    ]
    feed = {INPUT_NAME: np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])).astype(np.float32))}
    calls = {k: (lambda s=session: s.run(None, feed)) for k, session in enumerate(sessions)}
    medians = interleaved_medians(calls, repeats, warmup=10)
    return [1000 * medians[k] for k in range(len(sessions))]


def compact_row(name: str, sparse, data, repeats: int) -> dict:
    from deploykit.sparsity import compact

    small, report = compact(sparse, data)
    row = {
        "model": name,
        "macs_before": report.macs_before,
        "macs_after": report.macs_after,
        "macs_ratio": report.macs_ratio,
        "neurons_removed": report.neurons_removed,
        "widths_after": [l.neurons_after for l in report.layers],
        "max_abs_diff": report.max_abs_diff,
    }
    for batch, reps in ((1, repeats * 10), (256, repeats)):
        before, after = paired_latency_ms([sparse, small], data.x_test, batch, reps)
        row[f"latency_b{batch}_ms_before"], row[f"latency_b{batch}_ms_after"] = before, after
        row[f"latency_b{batch}_ratio"] = after / before
        row[f"latency_b{batch}_vs_macs"] = (after / before) / report.macs_ratio
    return row


def bench(data, args) -> dict:
    from deploykit.core.evaluate import accuracy
    from deploykit.sparsity import prune, sparsify_l1

    t0 = time.perf_counter()
    dense = train(data, args.train_epochs)
    dense_acc = accuracy(dense, data.x_test, data.y_test)
    print(f"[{data.name}] dense test accuracy {dense_acc:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    pruned, report = prune(
        dense,
        data,
        0.8,
        epochs=args.prune_epochs,
        learning_rate=args.learning_rate,
        progress=lambda m: print(f"[{data.name}] prune {m}", flush=True),
    )
    drop_points = 100 * (dense_acc - report.accuracy_after)
    row = {
        "dataset": data.name,
        "summary": data.summary(),
        "dense_accuracy": dense_acc,
        "pruned_accuracy": report.accuracy_after,
        "accuracy_drop_points": drop_points,
        "accuracy_target_met": drop_points <= 1.0,
        "pruned_layer_sparsity": {l.name: l.sparsity for l in report.layers},
        "model_sparsity": report.sparsity,
        "file_bytes_dense": report.file_bytes_before,
        "file_bytes_pruned": report.file_bytes_after,
        "gzip_bytes_dense": report.gzip_bytes_before,
        "gzip_bytes_pruned": report.gzip_bytes_after,
        "gzip_ratio": report.gzip_ratio,
        "gzip_target_met": report.gzip_ratio <= 1 / 3,
        "prune_epochs_run": report.epochs_run,
        "prune_best_epoch": report.best_epoch,
        "schedule": report.schedule.to_dict(),
    }
    print(f"[{data.name}] pruned accuracy {report.accuracy_after:.4f}, gzip ratio {report.gzip_ratio:.3f}", flush=True)
    row["dense_finetuned_accuracy"] = dense_control(dense, data, args)
    row["accuracy_drop_vs_finetuned_points"] = 100 * (row["dense_finetuned_accuracy"] - report.accuracy_after)
    row["l1"], row["compact"] = [], [compact_row("pruned 80%", pruned, data, args.repeats)]
    for l1 in args.l1:
        sparse, l1_report = sparsify_l1(
            dense, data, l1=l1, threshold=args.threshold, epochs=args.prune_epochs, learning_rate=args.learning_rate
        )
        row["l1"].append(
            {
                "l1": l1,
                "threshold": args.threshold,
                "sparsity": l1_report.sparsity,
                "accuracy_before_zeroing": l1_report.accuracy_before_zeroing,
                "accuracy": l1_report.accuracy_after,
                "gzip_ratio": l1_report.gzip_ratio,
            }
        )
        row["compact"].append(compact_row(f"l1 {l1:g}, |w| < {args.threshold:g}", sparse, data, args.repeats))
        print(
            f"[{data.name}] l1 {l1:g}: sparsity {l1_report.sparsity:.3f}, accuracy {l1_report.accuracy_after:.4f}, "
            f"compact MACs ratio {row['compact'][-1]['macs_ratio']:.3f}",
            flush=True,
        )
    row["seconds"] = time.perf_counter() - t0
    return row


def markdown(rows: list[dict], skipped: list[str]) -> str:
    out = [
        "# Sparsity benchmark",
        "",
        "Dense model (784/64-300-100-10, relu) vs TF-MOT magnitude pruning to 80% (output layer dense), then "
        "`compact`.",
        "'dense fine-tuned' is a control: the dense model trained on with the pruning run's epochs and rate.",
        "Targets: accuracy within 1 point; gzip size of the pruned model at most 1/3 of the dense one;",
        "onnxruntime latency after `compact` falling in proportion to the multiply-adds removed.",
        "",
    ]
    out += [
        "| data | dense acc | dense fine-tuned acc | pruned acc | drop (points) | gzip dense | gzip pruned | gzip "
        "ratio | targets met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = f"acc {'yes' if r['accuracy_target_met'] else 'NO'}, gzip {'yes' if r['gzip_target_met'] else 'NO'}"
        out.append(
            f"| {r['dataset']} | {r['dense_accuracy']:.4f} | {r['dense_finetuned_accuracy']:.4f} "
            f"| {r['pruned_accuracy']:.4f} | {r['accuracy_drop_points']:+.2f} "
            f"| {r['gzip_bytes_dense']} | {r['gzip_bytes_pruned']} | {r['gzip_ratio']:.3f} | {met} |"
        )
    out += [
        "",
        "## compact: MACs removed vs onnxruntime latency (1 thread, median)",
        "",
        "| data | model | widths after | MACs ratio | b1 ms before/after | b1 ratio | b256 ms before/after | b256 "
        "ratio "
        "| b256 ratio / MACs ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for c in r["compact"]:
            out.append(
                f"| {r['dataset']} | {c['model']} | {c['widths_after']} | {c['macs_ratio']:.3f} "
                f"| {c['latency_b1_ms_before']:.4f} / {c['latency_b1_ms_after']:.4f} | {c['latency_b1_ratio']:.3f} "
                f"| {c['latency_b256_ms_before']:.3f} / {c['latency_b256_ms_after']:.3f} | "
                f"{c['latency_b256_ratio']:.3f} "
                f"| {c['latency_b256_vs_macs']:.2f} |"
            )
    out += [
        "",
        "## l1 sparsity (same fine-tuning budget)",
        "",
        "| data | l1 | threshold | sparsity | acc before zeroing | acc | gzip ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for l1 in r["l1"]:
            out.append(
                f"| {r['dataset']} | {l1['l1']:g} | {l1['threshold']:g} | {l1['sparsity']:.3f} "
                f"| {l1['accuracy_before_zeroing']:.4f} | {l1['accuracy']:.4f} | {l1['gzip_ratio']:.3f} |"
            )
    for reason in skipped:
        out += ["", f"Skipped: {reason}"]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-epochs", type=int, default=30)
    parser.add_argument("--prune-epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=None, help="fine-tuning rate (default: the config's)")
    parser.add_argument("--l1", type=float, nargs="+", default=[1e-3, 3e-3], help="l1 factors to compare")
    parser.add_argument("--threshold", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per latency at batch 256 (x10 at batch 1)")
    args = parser.parse_args(argv)

    from deploykit.data.dataset import load_dataset

    rows, skipped = [], []
    rows.append(bench(load_dataset("digits"), args))
    if FASHION.exists():
        rows.append(bench(load_dataset(FASHION), args))
    else:
        skipped.append(
            f"Fashion-MNIST sample not found at ../shared/data/{FASHION.name} (relative to the repository root)"
        )
        print(f"skipping Fashion-MNIST: {skipped[-1]}", flush=True)
    result = {"benchmark": "sparsity", "args": vars(args), "results": rows, "skipped": skipped}
    write_results("sparsity", result, markdown(rows, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
