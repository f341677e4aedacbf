"""Chapter 11 with deploykit's Python API: train, optimize, then look at one uncertain prediction with MC Dropout.

1. Train a dense classifier with the chapter's recommended default configuration
   (Table 11-3: He initialization, ELU, BatchNormalization, Nadam, 1cycle,
   early stopping, dropout on the top layers) -- ``deploykit.train``.
2. Optimize it in one call -- ``deploykit.optimize``: TF-MOT pruning, BatchNorm
   folding, dead-neuron removal, ONNX and TFLite at float32 / float16 / int8,
   the MC Dropout ONNX model, every artifact validated in its runtime, and a
   report (report.md, report.json, plots).
3. The chapter's MC Dropout moment: for the test item the model is least sure
   of (highest MC predictive entropy), the deterministic prediction next to the
   MC Dropout one (100 samples, one onnxruntime call). The book's example has
   the plain model at 99% while MC Dropout gives 62%.

Runs on the embedded digits by default; ``--data`` takes Fashion-MNIST's IDX
files (a folder with train-images-idx3-ubyte.gz ..., or one images file) or an
.npz with x and y, for the book's own dataset::

    python examples/chapter11_walkthrough.py
    python examples/chapter11_walkthrough.py --data path/to/fashion-mnist --hidden 300,100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def class_names(data) -> tuple[str, ...]:
    """Fashion-MNIST's names for 28x28 data with ten classes 0-9, else the dataset's own."""
    if (
        data.input_shape == (28, 28)
        and data.class_names == tuple(str(i) for i in range(10))
        and "digit" not in data.name
    ):
        return FASHION_NAMES
    return data.class_names


def top(probs: np.ndarray, names, std: np.ndarray | None = None, k: int = 3) -> str:
    order = np.argsort(-probs)[:k]
    spread = (lambda c: f" ± {100 * std[c]:.0f}") if std is not None else (lambda c: "")
    return ", ".join(f"{names[c]} {100 * probs[c]:.0f}%{spread(c)}" for c in order)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="'digits' (default), Fashion-MNIST IDX files / folder, or an .npz")
    p.add_argument("--hidden", default=None, metavar="W,W,...", help="hidden layer widths (default: the preset's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--out", default="chapter11-out", help="output folder (default: ./chapter11-out)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--samples", type=int, default=100, help="MC Dropout samples for the final comparison (default: 100)"
    )
    args = p.parse_args(argv)

    import deploykit
    from deploykit.training import TrainConfig

    data = deploykit.load_dataset(args.data)
    say(f"data {data.summary()}")
    options = {"hidden": args.hidden, "epochs": args.epochs}
    config = TrainConfig(**{k: v for k, v in options.items() if v is not None})  # the default preset (Table 11-3)

    # 1. Train with the chapter's recommended configuration.
    say(
        f"training: preset {config.preset.value}, hidden {config.hidden}, batchnorm {config.use_batchnorm}, "
        f"dropout {config.dropout} on the top {config.dropout_layers} layers, learning rate {config.learning_rate}"
    )
    trained = deploykit.train(config, data, progress=say)
    say(f"trained: test accuracy {trained.test_accuracy:.4f}")

    # 2. Optimize: every step on by default; the output folder appears only when everything passed.
    out = Path(args.out)
    result = deploykit.optimize(trained.model, data, out_dir=out, force=args.force, progress=say)
    print(result.table())
    print(f"\nreport: {out / 'report.md'}\n")

    # 3. MC Dropout on the test item the model is least sure of.
    mc_path = out / "model_mc.onnx"
    if not mc_path.exists():
        print("no MC Dropout model (the trained model has no dropout)")
        return 0
    names = class_names(data)
    predictor = deploykit.UncertaintyPredictor(mc_path)
    mc = predictor.predict(data.x_test, samples=args.samples)
    deterministic = np.asarray(result.model(data.x_test, training=False))  # the optimized model, dropout off
    item = int(np.argmax(mc.predictive_entropy))
    print(f"test item #{item} (true class: {names[data.y_test[item]]}), the one MC Dropout is least sure of:")
    print(f"  deterministic (dropout off):      {top(deterministic[item], names)}")
    print(f"  MC Dropout (T = {mc.samples}, dropout on): {top(mc.mean[item], names, mc.std[item])}")
    print(
        f"  predictive entropy {mc.predictive_entropy[item]:.2f} nats, mutual information "
        f"{mc.mutual_information[item]:.2f} nats (the part of the uncertainty that is the model's own)"
    )
    gap = deterministic.max(axis=1) - mc.mean[np.arange(len(mc.mean)), deterministic.argmax(axis=1)]
    worst = int(np.argmax(gap))
    print(f"largest drop in confidence, test item #{worst} (true class: {names[data.y_test[worst]]}):")
    print(f"  deterministic: {top(deterministic[worst], names)}")
    print(f"  MC Dropout:    {top(mc.mean[worst], names, mc.std[worst])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
