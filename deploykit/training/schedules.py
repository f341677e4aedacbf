"""The 1cycle schedule (Smith 2018, as in the chapter), updated every iteration.

Over ``total_steps`` iterations the rate goes linearly from ``start_rate``
(``max_rate / 10``) up to ``max_rate`` at mid-training (the middle of the
steps before the final phase), linearly back down to ``start_rate``, then, for
the last ``anneal_fraction`` of the steps (5%), linearly down to ``last_rate``
(``start_rate / 1000``: three more orders of magnitude). With SGD the momentum
mirrors it: 0.95 -> 0.85 at the peak -> 0.95, and stays at 0.95 while annealing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deploykit.backend import keras, tf
from deploykit.errors import ConfigError
from deploykit.training.presets import SGD_MOMENTUM, Optimizer

HIGH_MOMENTUM = 0.95
LOW_MOMENTUM = 0.85


@dataclass(frozen=True)
class OneCycle:
    """The schedule as pure functions of the iteration: :meth:`rate_at` and :meth:`momentum_at`."""

    total_steps: int
    max_rate: float
    start_factor: float = 10.0  # start_rate = max_rate / start_factor
    anneal_factor: float = 1000.0  # last_rate = start_rate / anneal_factor
    anneal_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.total_steps < 2:
            raise ConfigError(f"1cycle needs at least 2 steps, got total_steps={self.total_steps}")
        if not (math.isfinite(self.max_rate) and self.max_rate > 0):
            raise ConfigError(f"1cycle max_rate must be a positive number, got {self.max_rate!r}")
        if not 0.0 <= self.anneal_fraction < 1.0:
            raise ConfigError(f"1cycle anneal_fraction must be in [0, 1), got {self.anneal_fraction!r}")

    @property
    def start_rate(self) -> float:
        return self.max_rate / self.start_factor

    @property
    def last_rate(self) -> float:
        return self.start_rate / self.anneal_factor

    @property
    def anneal_steps(self) -> int:
        return max(1, math.ceil(self.total_steps * self.anneal_fraction)) if self.anneal_fraction else 0

    @property
    def peak_step(self) -> int:
        """The iteration at which the rate reaches ``max_rate``."""
        return (self.total_steps - self.anneal_steps) // 2

    def _phase(self, step: int) -> tuple[int, float]:
        """(phase 0 up / 1 down / 2 anneal, progress in [0, 1] through it)."""
        step = min(max(int(step), 0), self.total_steps)
        half = max(self.peak_step, 1)
        if step < half:
            return 0, step / half
        if step < 2 * half:
            return 1, (step - half) / half
        return 2, min(1.0, (step - 2 * half) / max(self.total_steps - 2 * half, 1))

    def rate_at(self, step: int) -> float:
        phase, t = self._phase(step)
        if phase == 0:
            return self.start_rate + (self.max_rate - self.start_rate) * t
        if phase == 1:
            return self.max_rate - (self.max_rate - self.start_rate) * t
        return self.start_rate - (self.start_rate - self.last_rate) * t

    def momentum_at(self, step: int) -> float:
        phase, t = self._phase(step)
        if phase == 0:
            return HIGH_MOMENTUM - (HIGH_MOMENTUM - LOW_MOMENTUM) * t
        if phase == 1:
            return LOW_MOMENTUM + (HIGH_MOMENTUM - LOW_MOMENTUM) * t
        return HIGH_MOMENTUM


class OneCycleCallback(keras.callbacks.Callback):
    """Sets the optimizer's rate (and, when ``cycle_momentum``, its momentum variable) before every batch."""

    def __init__(self, schedule: OneCycle, cycle_momentum: bool = False):
        super().__init__()
        self.schedule = schedule
        self.cycle_momentum = cycle_momentum
        self.step = 0
        self.rates: list[float] = []  # the rate of every iteration, for the history

    def on_train_batch_begin(self, batch, logs=None):
        rate = self.schedule.rate_at(self.step)
        self.model.optimizer.learning_rate.assign(rate)
        if self.cycle_momentum:
            self.model.optimizer.momentum.assign(self.schedule.momentum_at(self.step))
        self.rates.append(rate)
        self.step += 1


def make_optimizer(kind: Optimizer, rate: float):
    """Nadam, or SGD with Nesterov momentum (a variable, so 1cycle can cycle it), at ``rate``."""
    if kind is Optimizer.SGD:
        momentum = tf.Variable(SGD_MOMENTUM, trainable=False, dtype=tf.float32, name="momentum")
        return keras.optimizers.SGD(learning_rate=rate, momentum=momentum, nesterov=True)
    return keras.optimizers.Nadam(learning_rate=rate)
