"""Training benchmark: the chapter's 784-300-100-10 network with each preset, side by side with a plain baseline.

On the Fashion-MNIST sample at ``../shared/data/fashion_mnist_3615.npz`` (from
the repository root; skipped with a message when absent), split by
``deploykit.data.dataset`` (stratified, seed 42). Each deploykit run uses ``--lr auto``
(the finder), 1cycle and early stopping; the baseline is what a Keras user
gets without the chapter's advice: Glorot init, ReLU, Adam at its default
1e-3 with no schedule, same epochs and early stopping. Writes
``benchmarks/results/train.json`` and ``train.md`` with accuracies, times and
ratios to the baseline.

    python benchmarks/bench_train.py [--epochs 20]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from common import FASHION as DATA  # noqa: E402  (puts the repository on sys.path)
from common import write_results

from deploykit.data.dataset import load_dataset  # noqa: E402
from deploykit.training import TrainConfig, train  # noqa: E402

HIDDEN = (300, 100)

RUNS = {
    "default, Nadam": dict(preset="default", optimizer="nadam"),
    "default, SGD+Nesterov": dict(preset="default", optimizer="sgd"),
    "default, Nadam, BN on": dict(preset="default", optimizer="nadam", batchnorm="on"),
    "selu, Nadam": dict(preset="selu", optimizer="nadam"),
}


def baseline(data, epochs: int, patience: int) -> dict:
    from deploykit.backend import keras, set_seed

    set_seed(42)
    model = keras.Sequential(
        [keras.Input(shape=data.input_shape), keras.layers.Flatten(), keras.layers.Rescaling(1 / 255.0)]
        + [keras.layers.Dense(w, activation="relu") for w in HIDDEN]
        + [keras.layers.Dense(data.num_classes, activation="softmax")]
    )
    model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.monotonic()
    stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    hist = model.fit(
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=32,
        verbose=0,
        validation_data=(data.x_val, data.y_val),
        callbacks=[stop],
    )
    acc = float(np.mean(model.predict(data.x_test, verbose=0).argmax(1) == data.y_test))
    return {
        "test_accuracy": acc,
        "seconds": round(time.monotonic() - t0, 1),
        "epochs_run": len(hist.history["loss"]),
        "learning_rate": 1e-3,
        "params": int(model.count_params()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=10)
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: the Fashion-MNIST sample {DATA.name} is not at ../shared/data/ beside the repository")
        return 0
    data = load_dataset(DATA)
    rows = {"baseline: Glorot, ReLU, Adam 1e-3": baseline(data, args.epochs, args.patience)}
    for name, options in RUNS.items():
        config = TrainConfig(hidden=HIDDEN, dropout=0.0, epochs=args.epochs, patience=args.patience, **options)
        result = train(config, data)
        r = result.record
        rows[name] = {
            "test_accuracy": r.test_accuracy,
            "seconds": r.seconds,
            "epochs_run": r.epochs_run,
            "learning_rate": r.learning_rate,
            "params": r.params,
        }
        print(f"{name}: {r.test_accuracy:.4f} in {r.seconds:.1f}s", file=sys.stderr)
    base = next(iter(rows.values()))
    for row in rows.values():
        row["accuracy_vs_baseline"] = round(row["test_accuracy"] / base["test_accuracy"], 4)
        row["time_vs_baseline"] = round(row["seconds"] / base["seconds"], 2)
    summary = {
        "data": data.summary(),
        "network": "784-" + "-".join(map(str, HIDDEN)) + "-10",
        "epochs": args.epochs,
        "patience": args.patience,
        "runs": rows,
    }
    lines = [
        f"# Training: {summary['network']} on {summary['data']}",
        "",
        f"Up to {args.epochs} epochs, early stopping patience {args.patience}; deploykit runs pick the rate with the "
        "finder.",
        "",
        "| run | max rate | epochs | test accuracy | x baseline | seconds | x baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {row['learning_rate']:.3g} | {row['epochs_run']} | {row['test_accuracy']:.4f} | "
        f"{row['accuracy_vs_baseline']:.3f} | {row['seconds']:.1f} | {row['time_vs_baseline']:.2f} |"
        for name, row in rows.items()
    ]
    write_results("train", summary, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
