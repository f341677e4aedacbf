"""Per-layer accuracy-controlled int8 fallback: return the most harmful layers to float, one by one, until int8 fits.

A whole-model int8 setting that misses the accuracy budget is usually spoilt by one or two layers (the first
layer of raw inputs, an output layer with a wide range, a convolution whose channels' ranges differ by orders
of magnitude); leaving every layer in float to save them gives up all of int8's size and speed. As NNCF's
``quantize_with_accuracy_control`` does, this module

1. ranks the quantized layers by their effect on the validation figure: each layer alone is left in float
   (the rest quantized) and the figure measured; the layer whose float copy recovers the most is the most
   harmful;
2. returns them to float in that order, cumulatively, until a try is within the budget,

with a bounded number of tries (each is an export, calibration and a validation run). Only the layers named
by the caller are ranked (at most :data:`MAX_RANKED`: on a deep net, the ones whose kernels lose most to int8
rounding, :func:`rank_candidates`). The caller says what one try is: ``attempt(exclude) -> (passed, figure)``,
so the same search serves ``optimize`` (decided on the validation split, see ``deploykit.pipeline.int8_search``)
and any exporter that can leave named layers in float (``QuantConfig.exclude``).

Pure Python and numpy: no TensorFlow, onnx or onnxruntime here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from deploykit.records import Record

#: Layers ranked one at a time at most (each ranking try is one export); on deeper nets the rest stay int8.
MAX_RANKED = 8
#: Tries in all (ranking and returning to float), whatever the number of layers.
MAX_TRIES = 12

#: One try: the layers left in float -> (within the budget, the validation figure: higher is better, None if unmade).
Attempt = Callable[[tuple[str, ...]], tuple[bool, float | None]]


@dataclass
class LayerEffect(Record):
    """The validation figure with this layer alone left in float (the rest int8); None when the try failed."""

    layer: str
    figure: float | None


@dataclass
class FallbackReport(Record):
    """What the per-layer fallback ranked and which layers the kept try left in float (empty: none passed)."""

    ranking: list[LayerEffect] = field(default_factory=list)  # most harmful first
    kept_float: list[str] = field(default_factory=list)
    tries: int = 0
    passed: bool = False
    standardized: bool = False  # the inputs standardized in float first (deploykit.export.int8_layers)

    def describe(self) -> str:
        from deploykit.export.int8_prep import STANDARDIZED_NOTE

        first = f"{STANDARDIZED_NOTE}, " if self.standardized else ""
        if self.passed:
            kept = f"{', '.join(self.kept_float)} returned to float" if self.kept_float else "no layer in float"
            return f"{first}{kept} ({self.tries} tries)"
        order = ", ".join(e.layer for e in self.ranking)
        return f"{first}no layer set within the budget in {self.tries} tries (most harmful first: {order})"


def return_to_float(
    layers: Sequence[str],
    attempt: Attempt,
    *,
    max_tries: int = MAX_TRIES,
    allowed: Callable[[], bool] = lambda: True,
) -> FallbackReport:
    """Rank ``layers`` by leaving each alone in float, then leave the most harmful in float cumulatively.

    Stops at the first try within the budget, after ``max_tries`` tries, or when ``allowed()`` (a time budget)
    says no more. Leaving every layer in float is never tried: that is no int8 at all.
    """
    report = FallbackReport()

    def run(exclude: tuple[str, ...]) -> tuple[bool, float | None]:
        report.tries += 1
        return attempt(exclude)

    for layer in layers:
        if report.tries >= max_tries or not allowed():
            return _ranked(report)
        passed, figure = run((layer,))
        report.ranking.append(LayerEffect(layer, figure))
        if passed:
            report.kept_float, report.passed = [layer], True
            return _ranked(report)
    order = [e.layer for e in _ranked(report).ranking]
    for count in range(2, len(order)):
        if report.tries >= max_tries or not allowed():
            break
        passed, _ = run(tuple(order[:count]))
        if passed:
            report.kept_float, report.passed = order[:count], True
            break
    return report


def _ranked(report: FallbackReport) -> FallbackReport:
    """The ranking most harmful first: the highest figure with the layer in float (failed tries last)."""
    report.ranking.sort(key=lambda e: -np.inf if e.figure is None else -e.figure)
    return report


def rank_candidates(kernels: Mapping[str, np.ndarray], limit: int = MAX_RANKED) -> list[str]:
    """The layers worth ranking, in graph order: all when at most ``limit``, else the ``limit`` whose kernels lose
    most to symmetric per-output-channel int8 rounding (:func:`rounding_error`; a cheap proxy, no export)."""
    names = list(kernels)
    if len(names) <= limit:
        return names
    worst = sorted(names, key=lambda n: -rounding_error(kernels[n]))[:limit]
    return [n for n in names if n in worst]


def layer_kernels(model, names) -> dict[str, np.ndarray]:
    """{name: its kernel} of a Keras model's layers, for :func:`rank_candidates`; a name the model cannot resolve at
    its top level (a layer of a nested model) or a layer without weights gets a zero kernel (ranked last, kept)."""
    kernels = {}
    for name in names:
        try:
            weights = model.get_layer(name).get_weights()
        except ValueError:
            weights = []
        kernels[name] = np.asarray(weights[0]) if weights else np.zeros((1, 1))
    return kernels


def rounding_error(kernel: np.ndarray) -> float:
    """RMS of W - int8(W) over the median magnitude of W's non-zero weights, one symmetric scale per output channel
    (the kernel's last axis): large when a few outliers set the scale and the typical weight rounds to a step or
    two (a norm ratio would hide that: the outliers dominate the norm too)."""
    w = np.asarray(kernel, np.float64).reshape(-1, np.shape(kernel)[-1])
    scale = np.abs(w).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    nonzero = np.abs(w[w != 0])
    if not nonzero.size:
        return 0.0
    return float(np.sqrt(np.mean((w - np.round(w / scale) * scale) ** 2)) / np.median(nonzero))
