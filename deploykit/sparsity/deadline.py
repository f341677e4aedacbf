"""What a time budget allows the sparsity search: a deadline, a cheaper sensitivity scan, a stop inside a try.

:mod:`deploykit.pipeline.budget` plans these from measured costs; the search only obeys them, so the search
itself stays a search (:mod:`deploykit.sparsity.search`). Without limits the search runs as configured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: The levels of a cheaper sensitivity scan (the full one: the search's LEVELS).
CHEAP_LEVELS = (0.5, 0.8, 0.95)


@dataclass(frozen=True)
class SearchLimits:
    """The search's share of a time budget.

    ``stop_at``: ``time.monotonic()`` by which the search must have ended (a try running then is stopped and
    reported as such). ``levels`` / ``scan_rows`` / ``scan_share``: the sensitivity scan's levels, validation
    rows (None: all) and the share of the prunable weights it covers, largest layers first (the smallest layers
    take the common target unscanned: they cannot move the mean). ``try_seconds``: what a try is expected to
    cost before one was measured; a try that cannot finish by ``stop_at`` is not started.
    """

    stop_at: float | None = None
    levels: tuple[float, ...] | None = None  # None: the search's own
    scan_rows: int | None = None
    scan_share: float = 1.0
    try_seconds: float = 0.0

    def left(self) -> float:
        """Seconds until ``stop_at`` (infinite without one)."""
        return float("inf") if self.stop_at is None else self.stop_at - time.monotonic()

    def fits(self, seconds: float) -> bool:
        return seconds <= self.left()

    def next_try_fits(self, measured: list[float]) -> bool:
        """Whether one more try is expected to finish in time: the slowest measured try, else the planned cost."""
        return self.fits(max(measured) if measured else self.try_seconds)

    def stopper(self):
        """A fresh Keras callback that stops training at ``stop_at`` (None without a deadline)."""
        return None if self.stop_at is None else deadline_callback(self.stop_at)

    def scan_layers(self, sizes: dict[str, int]) -> list[str]:
        """The layers scanned: the largest first until ``scan_share`` of the weights is covered (in model order)."""
        if self.scan_share >= 1.0:
            return list(sizes)
        total, covered, chosen = sum(sizes.values()), 0, set()
        for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
            if covered >= self.scan_share * total:
                break
            chosen.add(name)
            covered += size
        return [n for n in sizes if n in chosen]


def deadline_callback(stop_at: float):
    """A Keras callback setting ``stop_training`` at the first batch ending after ``stop_at`` (``stopped`` says so)."""
    from deploykit.backend import keras

    class DeadlineStop(keras.callbacks.Callback):
        """Stops training at the time budget's deadline; ``stopped`` holds the epoch (1-based) it stopped in."""

        def __init__(self):
            super().__init__()
            self.stopped: int | None = None
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() >= stop_at and self.stopped is None:
                self.stopped = self.epoch + 1
                self.model.stop_training = True

    return DeadlineStop()
