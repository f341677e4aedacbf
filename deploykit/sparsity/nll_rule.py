"""The sparsity search's second accept condition: a try's validation NLL within ``max_nll_increase`` of the original's.

Accuracy alone lets a pruned model through whose probabilities are much worse: digits pruned to 70 % was within
one point yet +14.7 % test NLL above the user's model, and every file exported from it carried that. The
promise a run makes is about the shipped file against the user's model, so a try is within the budget only
when its validation NLL is also at most ``limit`` (``validate.max_nll_increase``, default 2 %) above the
original's on the same rows, by the point estimate: the rule the export rows use on validation
(:func:`deploykit.pipeline.nll.export_check`).

The NLL is measured as the run would ship the try: when the run calibrates (the ``temperature`` step runs after
the search, on the pruned model), the temperature decision that step would take is taken on the try's
validation outputs (the pipeline passes :func:`deploykit.uncertainty.generalises.kept_temperature_nll` as
``NllRule.calibrate``: this layer does not import uncertainty), and a kept temperature is credited with its
*cross-validated* NLL (each row under a T fitted on the other folds), not the NLL of a T fitted on the very rows
it is judged on. Numpy only; nothing for a regressor or an output that is not [N, C] class scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deploykit.records import Record

#: Probabilities below this count as this (the floor of deploykit.pipeline.nll and of the temperature fit).
FLOOR = 1e-12


@dataclass(frozen=True)
class NllRule:
    """How tries are held to the NLL limit: the limit, how outputs become probabilities, whether the run calibrates."""

    limit: float  # the largest relative NLL increase vs the original (0.02 = 2 %)
    kind: object  # deploykit.core.task.OutputKind of the model's main output (logits are softmaxed)
    #: The run folds a temperature after the search when it generalises: (labels, probabilities) -> (its
    #: cross-validated NLL, T) when kept, else None. None: the run does not calibrate.
    calibrate: Callable[[np.ndarray, np.ndarray], tuple[float, float] | None] | None = None


@dataclass
class NllFigure(Record):
    """A try's validation NLL against the original's on the same rows, as the run would ship it."""

    nll: float  # the try's (cross-validated under its kept temperature, when the run calibrates and keeps one)
    original: float  # the original model's (as the user gave it: no temperature)
    change: float  # nll / original - 1
    temperature: float  # the temperature the run would fold (1.0: none)
    within: bool  # change <= limit


def losses(probabilities, y) -> np.ndarray | None:
    """Each row's -log p(label) (None when the outputs are not [N, C] class scores of these labels)."""
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(y)
    if y.ndim == 2 and p.ndim == 2 and y.shape == p.shape:  # one-hot labels
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if p.ndim != 2 or len(y) == 0 or len(p) != len(y) or not np.issubdtype(y.dtype, np.integer):
        return None
    if y.min() < 0 or y.max() >= p.shape[1]:
        return None
    return -np.log(np.maximum(p[np.arange(len(y)), y], FLOOR))


def judge(outputs, reference, y, rule: NllRule) -> NllFigure | None:
    """The try's :class:`NllFigure` from its validation ``outputs`` and the original's (``reference``), raw model
    outputs on the same rows (None when no NLL is defined for them)."""
    from deploykit.core.evaluate import main_outputs

    probs, original = (np.asarray(main_outputs(o, rule.kind), np.float64) for o in (outputs, reference))
    new, base = losses(probs, y), losses(original, y)
    if new is None or base is None:
        return None
    value, temperature = float(new.mean()), 1.0
    kept = None if rule.calibrate is None else rule.calibrate(_labels(y), probs)
    if kept is not None:
        value, temperature = kept
    reference_nll = float(base.mean())
    change = value / reference_nll - 1 if reference_nll > 0 else (0.0 if value <= 0 else float("inf"))
    return NllFigure(value, reference_nll, change, temperature, bool(change <= rule.limit + 1e-12))


def describe(nll: float, change: float, temperature: float | None, limit: float) -> str:
    """``validation NLL 0.4123 (+14.7% vs the original, T = 1.3 cross-validated), limit +2% (max_nll_increase)``: a
    try's NLL figure as every search's note gives it (the magnitude search's and the structured step's)."""
    calibrated = "" if temperature in (None, 1.0) else f", T = {temperature:.3g} cross-validated"
    return (
        f"validation NLL {nll:.4f} ({100 * change:+.1f}% vs the original{calibrated}), "
        f"limit +{100 * limit:g}% (max_nll_increase)"
    )


def miss_text(metric: str, figures: str, nll_text: str, nll_only: bool) -> str:
    """A missed try's note, led by what it missed, as every search writes it: ``NLL: ...; figures`` when only the
    NLL limit was missed (``nll_only``), else ``accuracy: figures`` with the NLL figure after it when judged."""
    if nll_only:
        return f"NLL: {nll_text}; {figures}"
    return f"{metric}: {figures}" + (f"; {nll_text}" if nll_text else "")


def _labels(y) -> np.ndarray:
    """Class indices (one-hot labels as their argmax)."""
    y = np.asarray(y)
    return y.argmax(1) if y.ndim == 2 else y
