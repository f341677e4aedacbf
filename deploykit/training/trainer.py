"""Train a dense classifier with a :class:`TrainConfig`: 1cycle, early stopping, best weights restored.

With ``out_dir`` the run writes, into a folder that appears only when
everything is written (``deploykit.atomic.atomic_dir``): ``model.keras``,
``history.json`` (Keras-style per-epoch lists plus the rate), ``record.json``
(the :class:`TrainRecord`), ``learning_curve.png`` and, when the rate was
picked by the finder, ``lr_finder.png``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.atomic import atomic_dir, write_text
from deploykit.data.dataset import Dataset
from deploykit.records import Record
from deploykit.training.lr_finder import LRFinderResult, find_lr
from deploykit.training.presets import Optimizer, TrainConfig

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
RECORD_FILE = "record.json"
CURVE_FILE = "learning_curve.png"
LR_PLOT_FILE = "lr_finder.png"


@dataclass
class TrainRecord(Record):
    """What was trained and how well it did."""

    config: TrainConfig
    data: str
    learning_rate: float  # the 1cycle maximum rate used
    lr_finder: LRFinderResult | None
    batchnorm: bool
    layers: list[str]
    params: int
    epochs_run: int
    best_epoch: int  # 1-based; its weights were restored
    val_accuracy: float
    test_accuracy: float
    seconds: float
    files: list[str] = field(default_factory=list)  # names of the files written into out_dir


@dataclass
class TrainResult:
    model: Any  # a fresh, uncompiled tf_keras Sequential holding the best weights
    history: dict[str, list[float]]
    test_accuracy: float
    record: TrainRecord


def train(
    config: TrainConfig,
    data: Dataset,
    out_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on ``data``'s training split (validation split for early stopping); score on its test split.

    ``out_dir`` must be absent or empty unless ``force``. ``progress`` gets one
    line per epoch.
    """
    say = progress or (lambda _msg: None)
    with atomic_dir(out_dir, force=force) if out_dir is not None else contextlib.nullcontext() as staging:
        result = _train(config, data, staging, say)
        if staging is not None:
            _write_outputs(result, Path(staging), Path(out_dir))
    return result


def _train(config: TrainConfig, data: Dataset, staging: Path | None, say: Callable[[str], None]) -> TrainResult:
    from deploykit.backend import keras, set_seed
    from deploykit.core.chain import from_chain, to_chain
    from deploykit.training.model import build_model
    from deploykit.training.schedules import OneCycle, OneCycleCallback, make_optimizer

    t0 = time.monotonic()
    finder = None
    if config.auto_lr:
        say("finding the learning rate")
        finder = find_lr(config, data, plot_path=None if staging is None else Path(staging) / LR_PLOT_FILE)
        say(f"picked max learning rate {finder.picked_rate:.3g} (lowest loss at {finder.min_loss_rate:.3g})")
    rate = finder.picked_rate if finder else float(config.learning_rate)

    set_seed(config.seed)
    model = build_model(config, data)
    model.compile(
        optimizer=make_optimizer(config.optimizer, rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    steps_per_epoch = math.ceil(len(data.x_train) / config.batch_size)
    one_cycle = OneCycleCallback(
        OneCycle(config.epochs * steps_per_epoch, rate), cycle_momentum=config.optimizer is Optimizer.SGD
    )
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    log = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: say(_epoch_line(epoch, config.epochs, logs, one_cycle))
    )
    fit = model.fit(
        data.x_train,
        data.y_train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        validation_data=(data.x_val, data.y_val),
        callbacks=[one_cycle, stopper, log],
        verbose=0,
    )
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    history["lr"] = [
        one_cycle.rates[min(len(one_cycle.rates), (e + 1) * steps_per_epoch) - 1] for e in range(len(history["loss"]))
    ]

    clean = from_chain(to_chain(model))  # the best weights, without optimizer state
    test_accuracy = accuracy(clean, data.x_test, data.y_test)
    best = int(stopper.best_epoch)
    record = TrainRecord(
        config=config,
        data=data.summary(),
        learning_rate=rate,
        lr_finder=finder,
        batchnorm=config.use_batchnorm,
        layers=[_describe(layer) for layer in clean.layers],
        params=int(clean.count_params()),
        epochs_run=len(history["loss"]),
        best_epoch=best + 1,
        val_accuracy=history["val_accuracy"][best],
        test_accuracy=test_accuracy,
        seconds=round(time.monotonic() - t0, 2),
    )
    say(
        f"best epoch {best + 1} of {record.epochs_run}: val accuracy {record.val_accuracy:.4f}, "
        f"test accuracy {test_accuracy:.4f}"
    )
    return TrainResult(clean, history, test_accuracy, record)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a probability-output model."""
    probs = model.predict(x, batch_size=1024, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == y))


def _write_outputs(result: TrainResult, folder: Path, final: Path) -> None:
    """Write every output into the staging ``folder``; paths in the record name the ``final`` folder."""
    from deploykit.io.models import save_model
    from deploykit.training.plots import learning_curve_png

    result.record.files = [MODEL_FILE, HISTORY_FILE, CURVE_FILE, RECORD_FILE]
    if result.record.lr_finder:
        result.record.files.append(LR_PLOT_FILE)
        result.record.lr_finder.plot_path = final / LR_PLOT_FILE
    save_model(result.model, folder / MODEL_FILE)
    write_text(folder / HISTORY_FILE, json.dumps(result.history, indent=1) + "\n")
    learning_curve_png(result.history, folder / CURVE_FILE, result.record.best_epoch)
    write_text(folder / RECORD_FILE, json.dumps(result.record.to_dict(), indent=2) + "\n")


def _epoch_line(epoch: int, epochs: int, logs: dict, one_cycle) -> str:
    logs = logs or {}
    parts = [f"epoch {epoch + 1}/{epochs}"]
    for key, label in (("loss", "loss"), ("accuracy", "acc"), ("val_loss", "val_loss"), ("val_accuracy", "val_acc")):
        if key in logs:
            parts.append(f"{label} {logs[key]:.4f}")
    if one_cycle.rates:
        parts.append(f"lr {one_cycle.rates[-1]:.3g}")
    return "  ".join(parts)


def _describe(layer) -> str:
    config = layer.get_config()
    kind = type(layer).__name__
    if kind == "Dense":
        return f"Dense({config['units']}, {config['activation']}, {config['kernel_initializer']['class_name']})"
    if kind in ("Dropout", "AlphaDropout"):
        return f"{kind}({config['rate']:g})"
    if kind == "Activation":
        return f"Activation({config['activation']})"
    return kind
