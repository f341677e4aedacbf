"""The learning-rate finder: grow the rate exponentially on a fresh model, watch the loss.

Starting from ``min_rate`` the rate is multiplied by a constant factor every
iteration so that it would reach ``max_rate`` after ``steps`` iterations; the
training loss of each batch is recorded and smoothed (an exponential moving
average, bias-corrected). The run stops when the loss explodes: a non-finite
loss, or a smoothed loss above ``EXPLODE_FACTOR`` times the lowest one.

The rule that picks the 1cycle maximum rate: the loss shoots up right after
its lowest point, so the pick is the rate at the lowest smoothed loss divided
by ``PICK_DIVISOR`` (10), i.e. about ten times below where the loss turns up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploykit.data.dataset import Dataset
from deploykit.errors import ConfigError, StepError
from deploykit.records import Record
from deploykit.training.presets import TrainConfig

SMOOTHING = 0.9  # EMA factor of the batch losses
EXPLODE_FACTOR = 4.0  # stop once the smoothed loss exceeds this many times its minimum
PICK_DIVISOR = 10.0  # picked rate = rate at the lowest smoothed loss / this
MIN_STEPS = 10  # never stop before this many iterations (the first losses are noisy)


@dataclass
class LRFinderResult(Record):
    """What the finder saw and picked; the per-iteration curves stay out of ``to_dict``."""

    picked_rate: float
    min_loss_rate: float  # rate at the lowest smoothed loss
    min_loss: float
    exploded: bool  # False: the loss never shot up before max_rate (widen the range)
    explode_rate: float | None
    steps_run: int
    min_rate: float
    max_rate: float
    plot_path: Path | None = None
    rates: list[float] = field(default_factory=list, repr=False)
    losses: list[float] = field(default_factory=list, repr=False)
    smoothed: list[float] = field(default_factory=list, repr=False)


def find_lr(
    config: TrainConfig,
    data: Dataset,
    *,
    min_rate: float = 1e-5,
    max_rate: float = 10.0,
    steps: int = 300,
    plot_path: str | os.PathLike | None = None,
) -> LRFinderResult:
    """Run the finder on a fresh model built from ``config``; optionally save the loss-vs-rate PNG."""
    if not (0 < min_rate < max_rate and math.isfinite(max_rate)):
        raise ConfigError(f"lr finder: need 0 < min_rate < max_rate, got min_rate={min_rate!r}, max_rate={max_rate!r}")
    if not isinstance(steps, int) or steps < MIN_STEPS + 2:
        raise ConfigError(f"lr finder: steps must be an integer >= {MIN_STEPS + 2}, got {steps!r}")
    if plot_path is not None and Path(plot_path).suffix.lower() != ".png":
        raise ConfigError(f"lr finder: plot path {plot_path} must end in .png")
    from deploykit.backend import set_seed
    from deploykit.training.model import build_model
    from deploykit.training.schedules import make_optimizer

    set_seed(config.seed)
    model = build_model(config, data)
    optimizer = make_optimizer(config.optimizer, min_rate)
    step_fn = _train_step(model, optimizer)
    factor = (max_rate / min_rate) ** (1.0 / (steps - 1))
    rates, losses, smoothed = [], [], []
    avg, best, explode_rate = 0.0, math.inf, None
    for i, (x, y) in enumerate(_batches(data, config.batch_size, steps, config.seed)):
        rate = min_rate * factor**i
        optimizer.learning_rate.assign(rate)
        loss = float(step_fn(x, y))
        if not math.isfinite(loss):
            explode_rate = rate
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        value = avg / (1 - SMOOTHING ** (i + 1))
        rates.append(rate)
        losses.append(loss)
        smoothed.append(value)
        best = min(best, value)
        if i >= MIN_STEPS and value > EXPLODE_FACTOR * best:
            explode_rate = rate
            break
    if not rates:
        raise StepError(f"lr finder: the loss is not finite from the first step at min_rate={min_rate:g}; lower it")
    k = int(np.argmin(smoothed))
    result = LRFinderResult(
        picked_rate=rates[k] / PICK_DIVISOR,
        min_loss_rate=rates[k],
        min_loss=smoothed[k],
        exploded=explode_rate is not None,
        explode_rate=explode_rate,
        steps_run=len(rates),
        min_rate=min_rate,
        max_rate=max_rate,
        rates=rates,
        losses=losses,
        smoothed=smoothed,
    )
    if plot_path is not None:
        from deploykit.training.plots import lr_finder_png

        result.plot_path = lr_finder_png(rates, losses, smoothed, result.picked_rate, plot_path, result.min_loss_rate)
    return result


def _train_step(model, optimizer):
    from deploykit.backend import keras, tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            if model.losses:
                loss += tf.add_n(model.losses)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    return step


def _batches(data: Dataset, batch_size: int, steps: int, seed: int):
    """``steps`` shuffled training batches, reshuffled at each pass over the data."""
    rng = np.random.default_rng(seed)
    n = len(data.x_train)
    batch_size = min(batch_size, n)
    done = 0
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield data.x_train[idx], data.y_train[idx]
            done += 1
            if done == steps:
                return
