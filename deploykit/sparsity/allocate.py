"""Cost-aware structured shares: which layers lose how many units for one cut in multiply-adds.

A uniform share removes the same part of every hidden layer's units, but units do not cost the same: in the
book's network (784 -> 300 -> 100 -> 10) a first-layer unit does 784 + 100 multiply-adds per example and a
second-layer unit 300 + 10, and the first Dense holds 88 % of the MACs. Removing 80 % of every layer spends as
much accuracy on the cheap layer as on the expensive one for a small part of the speed.

:func:`allocate` reaches the multiply-adds a uniform share would leave (so a share still means "this fast"), but
removes units across the layers by their importance per multiply-add saved: each step drops the unit whose share
of its layer's importance, divided by the MACs its removal saves *now* (its kernel column and its rows in the next
kernel, both at the current kept widths), is the lowest. A layer's importance share (not the raw importance)
compares units across layers whose weights have different scales; the saving is recomputed as layers shrink, so
once the expensive layer has narrowed, the next layer's units (whose rows it no longer reads) cost even less to
keep. Each layer keeps at least one unit, as with a uniform share.

Pure NumPy on the graph's figures (no TensorFlow): layers, their units, MACs and what feeds what.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The ways a structured share is spread over the layers (``[structured] allocate``).
ALLOCATIONS = ("cost", "uniform")


@dataclass(frozen=True)
class Candidate:
    """A layer whose units may go: its units' importance (any order) and the next kernel that reads them."""

    name: str
    importance: np.ndarray  # one value per unit, >= 0
    dst: str  # the next Dense / conv whose rows (input channels) these units are


def uniform_drops(candidates: list[Candidate], share: dict[str, float]) -> dict[str, int]:
    """Units removed per layer by a uniform share (each layer keeps at least one): what ``fraction`` meant before."""
    out = {}
    for c in candidates:
        units = len(c.importance)
        out[c.name] = max(0, min(int(round(share[c.name] * units)), units - 1))
    return out


def macs_after(macs: dict[str, int], candidates: list[Candidate], drops: dict[str, int]) -> float:
    """Multiply-adds per example of every kernel in ``macs`` with ``drops`` units removed: a kernel's MACs scale
    with its kept outputs and with the kept units of the layer that feeds it (its input channels)."""
    kept = {c.name: 1 - drops.get(c.name, 0) / len(c.importance) for c in candidates}
    feeds = {c.dst: c.name for c in candidates}
    return float(sum(m * kept.get(name, 1.0) * kept.get(feeds.get(name, ""), 1.0) for name, m in macs.items()))


def allocate(macs: dict[str, int], candidates: list[Candidate], target: float) -> dict[str, int]:
    """Units removed per candidate layer so that the kernels' MACs reach ``target`` (or as close as keeping one
    unit per layer allows), the least important unit per multiply-add saved first.

    ``macs``: every kernel's multiply-adds per example at full width (candidates and the kernels they feed).
    """
    units = {c.name: len(c.importance) for c in candidates}
    shares = {c.name: np.sort(_shares(c.importance)) for c in candidates}
    feeds = {c.dst: c.name for c in candidates}
    dst = {c.name: c.dst for c in candidates}
    drops = dict.fromkeys(units, 0)
    kept = dict.fromkeys(units, 1.0)
    total = float(sum(macs.values()))
    while total > target * (1 + 1e-9):  # the products' float rounding must not cost one more unit
        best, best_score, best_saving = None, np.inf, 0.0
        for name, n in units.items():
            if drops[name] >= n - 1:
                continue
            # one unit: its column of its own kernel (read from the layer feeding it) and its rows of the next
            own = macs.get(name, 0) * kept.get(feeds.get(name, ""), 1.0)
            saving = (own + macs.get(dst[name], 0) * kept.get(dst[name], 1.0)) / n
            score = shares[name][drops[name]] / max(saving, 1e-12)
            if score < best_score:
                best, best_score, best_saving = name, score, saving
        if best is None:
            break
        drops[best] += 1
        kept[best] = 1 - drops[best] / units[best]
        total -= best_saving
    return drops


def _shares(importance: np.ndarray) -> np.ndarray:
    """Each unit's share of its layer's importance (equal shares when the layer's importance is all zero)."""
    values = np.abs(np.asarray(importance, np.float64))
    total = values.sum()
    return values / total if total > 0 else np.full(values.shape, 1.0 / max(values.size, 1))
