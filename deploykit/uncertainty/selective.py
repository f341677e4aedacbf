"""Selective prediction: a threshold on one uncertainty measure, chosen on the validation split, served in-graph.

A client that must decide when to trust a prediction needs a decision, not a
number. The threshold is the one that keeps the most validation rows while the
kept rows reach ``target_accuracy`` (or that keeps at least
``target_coverage`` of them); the rule is "abstain when measure > threshold".
Cuts fall between distinct measure values (the midpoint), so float32 rounding
in the graph cannot move a row across.

A target met on the validation split only is met on unseen data about half the time. With
``target_delta`` (default 0.1) the threshold is chosen with a finite-sample bound instead: SGR
(Geifman & El-Yaniv 2017, "Selective classification for deep neural networks") - a binary search over
the validation cuts, each tested at level delta / ceil(log2 N), keeping the most rows whose
Clopper-Pearson lower bound of the kept accuracy reaches the target, so that the kept rows' accuracy on
unseen data reaches it with probability >= 1 - delta. A regressor's kept RMSE has no distribution-free
bound (the squared error is unbounded): its bound is the one-sided Student-t upper bound of the kept MSE,
approximate and said so. ``target_delta=None`` gives the point rule (validation only).

The decision is stored twice: in ``metadata_props`` under
``deploykit.selective`` (JSON: measure, threshold, target kind and value,
validation coverage and accuracy, the rule), and as an extra graph output
``abstain`` (bool [N], = measure > threshold) computed from the model's own
outputs, so onnxruntime and Triton clients get it without deploykit code.

The default measure is the predictive entropy: it works for every model and
uses the whole distribution; ``MUTUAL_INFORMATION`` needs an MC or ensemble
model (see :mod:`deploykit.uncertainty.measures`).

Regression (an MC or ensemble regressor, outputs ``mean`` and ``std``): the
measure is ``INTERVAL_WIDTH``, the width of the central 95% interval
2 z std averaged over the targets, and the target is a coverage or
``target_rmse``: the RMSE of the kept rows' means (over every target value of
the kept rows, in the targets' units) must not exceed it. The risk of the
risk-coverage curve is then that RMSE.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.configs import Config, number
from deploykit.core.contract import ABSTAIN_OUTPUT, KIND_DETERMINISTIC, OUTPUT_NAME, OUTPUT_NAMES, file_task
from deploykit.core.contract import ABSTAIN_RULE as RULE
from deploykit.core.contract import SELECTIVE_KEY as METADATA_KEY
from deploykit.errors import ConfigError, DataError, UsageError
from deploykit.export.contract_onnx import output_info
from deploykit.onnx.builder import GraphBuilder
from deploykit.onnx.graph_ops import get_prop, set_props, toposort
from deploykit.records import Record
from deploykit.uncertainty.measures import Measure
from deploykit.uncertainty.regression import Z_95, check_targets

ABSTAIN_ALL = -1.0  # every measure is >= 0: this threshold abstains on every row
DEFAULT_DELTA = 0.1


@dataclass(frozen=True)
class SelectiveTarget(Config):
    """What the threshold must reach on the validation split: exactly one of the three, validated on construction.

    ``target_rmse`` (regression only, targets' units): the kept rows' RMSE must not exceed it.
    """

    target_accuracy: float | None = 0.99
    target_coverage: float | None = None
    target_rmse: float | None = None
    target_delta: float | None = DEFAULT_DELTA  # the risk that an accuracy / RMSE target misses on unseen data

    def __post_init__(self) -> None:
        number("target_delta", self.target_delta, 0.0, 1.0, optional=True, open_low=True, open_high=True)
        given = [n for n in ("target_accuracy", "target_coverage", "target_rmse") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError("give exactly one of target_accuracy, target_coverage and target_rmse")
        if given[0] == "target_rmse":
            number("target_rmse", self.target_rmse, 0.0, open_low=True)
        else:
            number(given[0], getattr(self, given[0]), 0.0, 1.0, open_low=True)


@dataclass
class SelectiveThreshold(Record):
    """The chosen threshold and what it gave on the split it was chosen on."""

    measure: Measure
    threshold: float
    target: SelectiveTarget
    coverage: float  # on the validation split
    accuracy: float  # of the kept validation rows (NaN when none kept; NaN for a regressor)
    count: int
    rmse: float | None = None  # regression: of the kept validation rows (NaN when none kept)
    #: With target_delta: the kept accuracy's lower bound (a regressor: the kept RMSE's upper bound) at 1 - delta.
    bound: float | None = None

    def metadata_value(self) -> str:
        regression = (
            {} if self.rmse is None else {"target_rmse": self.target.target_rmse, "validation_rmse": _finite(self.rmse)}
        )
        accuracy = (
            {}
            if self.rmse is not None
            else {"target_accuracy": self.target.target_accuracy, "validation_accuracy": _finite(self.accuracy)}
        )
        guarantee = (
            {}
            if self.bound is None
            else {
                "target_delta": self.target.target_delta,
                "bound": _finite(self.bound),
                "bound_kind": BOUND_KINDS[self.rmse is not None],
            }
        )
        return json.dumps(
            {
                "measure": self.measure.value,
                "threshold": self.threshold,
                "rule": RULE,
                "target_coverage": self.target.target_coverage,
                "validation_coverage": self.coverage,
                **accuracy,
                **regression,
                **guarantee,
                "count": self.count,
            }
        )


BOUND_KINDS = {
    False: "Clopper-Pearson lower bound of the kept accuracy (SGR, delta split over the binary search)",
    True: "Student-t upper bound of the kept RMSE (approximate; SGR binary search)",
}


@dataclass
class SelectiveResult(Record):
    """A threshold applied to a labelled split."""

    coverage: float
    accuracy: float  # of the kept rows (NaN when none kept; NaN for a regressor)
    kept: int
    count: int
    rmse: float | None = None  # regression: of the kept rows (NaN when none kept)


def choose_threshold(
    y_val, predicted, uncertainty, measure: Measure, target: SelectiveTarget = SelectiveTarget()
) -> SelectiveThreshold:
    """The threshold on ``uncertainty`` [N] that meets ``target`` on the validation split with the most rows kept."""
    if target.target_rmse is not None:
        raise UsageError("target_rmse is a regression target; a classifier takes target_accuracy or target_coverage")
    y, pred, u = _check(y_val, predicted, uncertainty)
    order = np.argsort(u, kind="stable")
    correct = pred[order] == y[order]
    bounded = target.target_accuracy is not None and target.target_delta is not None
    if bounded:
        from deploykit.uncertainty.guarantee import accuracy_lower_bounds

        good, bounds = _bounded(
            u[order],
            lambda level: accuracy_lower_bounds(correct, level),
            lambda b: b >= target.target_accuracy - 1e-12,
            target.target_delta,
        )
    else:
        good = np.cumsum(correct) / np.arange(1, len(u) + 1) >= (target.target_accuracy or 0) - 1e-12
    threshold = _cut(u[order], good, target)
    kept = u <= threshold
    acc = float((pred[kept] == y[kept]).mean()) if kept.any() else math.nan
    bound = (float(bounds[kept.sum() - 1]) if kept.any() else math.nan) if bounded else None
    return SelectiveThreshold(measure, threshold, target, float(kept.mean()), acc, len(u), bound=bound)


def _bounded(su: np.ndarray, bounds_at, ok, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """SGR's binary search over the cuts between distinct sorted values ``su``: each probe is tested at level
    delta / ceil(log2 N) (the union bound over the probes); ``good`` marks the one kept-count it returns."""
    n = len(su)
    probes = max(1, math.ceil(math.log2(max(n, 2))))
    bounds = bounds_at(delta / probes)  # [N]: the bound of the first k rows, k = 1..N
    cuts = np.flatnonzero(np.r_[su[:-1] < su[1:], True])  # index k-1 of each allowed cut
    lo, hi, best = -1, len(cuts) - 1, None
    for _ in range(probes):
        if lo >= hi:
            break
        mid = (lo + hi + 1) // 2
        if ok(bounds[cuts[mid]]):
            best, lo = cuts[mid], mid
        else:
            hi = mid - 1
    good = np.zeros(n, bool)
    if best is not None:
        good[best] = True
    return good, bounds


def choose_regression_threshold(
    y_val, mean, uncertainty, target: SelectiveTarget, measure: Measure = Measure.INTERVAL_WIDTH
) -> SelectiveThreshold:
    """The threshold on a regressor's ``uncertainty`` [N] (the interval width) meeting ``target`` on the
    validation split (``target_rmse`` or ``target_coverage``) with the most rows kept."""
    if target.target_accuracy is not None:
        raise UsageError("target_accuracy is a classification target; a regressor takes target_rmse or target_coverage")
    squared, u = _regression_check(y_val, mean, uncertainty)
    order = np.argsort(u, kind="stable")
    bounded = target.target_rmse is not None and target.target_delta is not None
    if bounded:
        from deploykit.uncertainty.guarantee import rmse_upper_bounds

        good, bounds = _bounded(
            u[order],
            lambda level: rmse_upper_bounds(squared[order], level),
            lambda b: b <= target.target_rmse + 1e-12,
            target.target_delta,
        )
    else:
        good = np.sqrt(np.cumsum(squared[order]) / np.arange(1, len(u) + 1)) <= (target.target_rmse or math.inf) + 1e-12
    threshold = _cut(u[order], good, target)
    kept = u <= threshold
    bound = (float(bounds[kept.sum() - 1]) if kept.any() else math.nan) if bounded else None
    return SelectiveThreshold(
        measure, threshold, target, float(kept.mean()), math.nan, len(u), _rmse(squared, kept), bound=bound
    )


def _cut(su: np.ndarray, good: np.ndarray, target: SelectiveTarget) -> float:
    """The float32 threshold keeping the most sorted rows ``su`` whose prefix is ``good`` (the quality target),
    or the fewest reaching the coverage target. Cuts fall between distinct values (the midpoint)."""
    n = len(su)
    k = np.arange(1, n + 1)
    cut_ok = np.r_[su[:-1] < su[1:], True]  # a cut after row k-1 separates distinct values
    if target.target_coverage is not None:
        keep = int(k[cut_ok & (k >= math.ceil(target.target_coverage * n - 1e-9))].min())
    else:
        ok = cut_ok & good
        keep = int(k[ok].max()) if ok.any() else 0
    if keep == 0:
        threshold = ABSTAIN_ALL
    elif keep == n:
        threshold = float(su[-1]) + max(1e-6, abs(float(su[-1])) * 1e-6)
    else:
        threshold = float((su[keep - 1] + su[keep]) / 2)
    return float(np.float32(threshold))


def apply_threshold(y, predicted, uncertainty, threshold: float) -> SelectiveResult:
    """Coverage and kept-row accuracy of "abstain when uncertainty > threshold" on a labelled split."""
    y, pred, u = _check(y, predicted, uncertainty)
    kept = u <= threshold
    acc = float((pred[kept] == y[kept]).mean()) if kept.any() else math.nan
    return SelectiveResult(float(kept.mean()), acc, int(kept.sum()), len(u))


def apply_regression_threshold(y, mean, uncertainty, threshold: float) -> SelectiveResult:
    """Coverage and kept-row RMSE of "abstain when uncertainty > threshold" on a regression split."""
    squared, u = _regression_check(y, mean, uncertainty)
    kept = u <= threshold
    return SelectiveResult(float(kept.mean()), math.nan, int(kept.sum()), len(u), _rmse(squared, kept))


def regression_risk_coverage(y, mean, uncertainty) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and risk (RMSE of the kept rows) when keeping the k least uncertain rows, k = 1..N."""
    squared, u = _regression_check(y, mean, uncertainty)
    k = np.arange(1, len(u) + 1)
    return k / len(u), np.sqrt(np.cumsum(squared[np.argsort(u, kind="stable")]) / k)


def risk_coverage(y, predicted, uncertainty) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and risk (error rate of the kept rows) when keeping the k least uncertain rows, k = 1..N."""
    y, pred, u = _check(y, predicted, uncertainty)
    wrong = pred[np.argsort(u, kind="stable")] != y[np.argsort(u, kind="stable")]
    k = np.arange(1, len(u) + 1)
    return k / len(u), np.cumsum(wrong) / k


def risk_coverage_plot(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    target_accuracy: float | None = None,
    target_rmse: float | None = None,
) -> Path:
    """Risk-coverage curves (one per method) in one PNG, written atomically (``target_rmse``: a regressor's,
    whose risk is the RMSE of the kept rows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from deploykit.atomic import atomic_path

    fig = Figure(figsize=(6, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (coverage, risk) in curves.items():
        ax.plot(coverage, risk, label=label)
    if target_accuracy is not None:
        ax.axhline(1 - target_accuracy, linestyle="--", color="gray", label=f"risk at {target_accuracy:.0%} accuracy")
    if target_rmse is not None:
        ax.axhline(target_rmse, linestyle="--", color="gray", label=f"target RMSE {target_rmse:.4g}")
    regression = target_rmse is not None or any(np.max(risk) > 1 for _, risk in curves.values())
    ax.set(
        xlim=(0, 1),
        ylim=(0, None),
        xlabel="coverage (share of rows kept)",
        ylabel="risk (RMSE of kept rows)" if regression else "risk (error rate of kept rows)",
        title="Risk-coverage",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# --- the graph edit -------------------------------------------------------------------------------


def add_abstain(proto, chosen: SelectiveThreshold) -> None:
    """Add the ``abstain`` output (bool [N]) and the ``deploykit.selective`` metadata to a model, in place.

    Works on a deterministic model (``probabilities`` output) and on an MC or
    ensemble model (the MC output contract), after any temperature edit.
    """
    import onnx

    ed = GraphBuilder.editing(proto, "selective")
    outputs = {o.name for o in ed.graph.output}
    if ABSTAIN_OUTPUT in outputs:
        raise UsageError("this ONNX model already has an abstain output")
    measure_tensor = _measure_tensor(ed, chosen.measure, outputs, OUTPUT_NAMES)
    ed.op("Greater", [measure_tensor, ed.const(chosen.threshold)], output=ABSTAIN_OUTPUT)
    ed.graph.output.append(output_info(ABSTAIN_OUTPUT, file_task(None, outputs), KIND_DETERMINISTIC))  # any kind
    toposort(ed.graph)
    set_props(proto, {METADATA_KEY: chosen.metadata_value()})
    onnx.checker.check_model(proto, full_check=True)


def read_selective(proto) -> dict | None:
    """The ``deploykit.selective`` entry of a model's metadata_props, or None."""
    raw = get_prop(proto, METADATA_KEY)
    return json.loads(raw) if raw else None


def _measure_tensor(ed: GraphBuilder, measure: Measure, outputs: set[str], contract: tuple[str, ...]) -> str:
    mean, entropy, mutual = "mean", "predictive_entropy", "mutual_information"  # outputs of the contract, by name
    regression = "std" in outputs and entropy not in outputs
    if (measure is Measure.INTERVAL_WIDTH) != regression:
        raise UsageError(
            "interval_width is the measure of a regression MC or ensemble model (outputs mean and std), "
            "and the only one; this model takes "
            f"{'interval_width' if regression else 'entropy, max_prob or mutual_information'}"
        )
    if regression:
        return ed.op("Mul", [ed.reduce("ReduceMean", "std", [1]), ed.const(2 * Z_95)])
    if set(contract) <= outputs:
        probs = mean
        if measure is Measure.ENTROPY:
            return entropy
        if measure is Measure.MUTUAL_INFORMATION:
            return mutual
    elif OUTPUT_NAME in outputs:
        probs = OUTPUT_NAME
        if measure is Measure.MUTUAL_INFORMATION:
            raise UsageError("mutual information needs an MC Dropout or ensemble model; use entropy or max_prob")
        if measure is Measure.ENTROPY:
            return ed.entropy(probs, 1)
    else:
        raise UsageError(f"cannot add abstain: the model has neither {OUTPUT_NAME!r} nor the MC outputs")
    return ed.op("Sub", [ed.const(1.0), ed.reduce("ReduceMax", probs, [1])])  # MAX_PROB: 1 - max p


def _check(y, predicted, uncertainty) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, pred, u = np.asarray(y), np.asarray(predicted), np.asarray(uncertainty, np.float64)
    if y.ndim != 1 or y.shape != pred.shape or y.shape != u.shape or len(y) == 0:
        raise DataError(
            f"labels, predictions and uncertainties must be [N] arrays of one length N >= 1, "
            f"got {list(y.shape)}, {list(pred.shape)}, {list(u.shape)}"
        )
    if not np.isfinite(u).all():
        raise DataError("uncertainties must be finite")
    return y, pred, u


def _regression_check(y, mean, uncertainty) -> tuple[np.ndarray, np.ndarray]:
    """Per-row squared errors (mean over the targets) and the uncertainties [N], or one DataError."""
    y, m, _ = check_targets(y, mean)
    u = np.asarray(uncertainty, np.float64)
    if u.shape != (len(y),):
        raise DataError(f"uncertainties must have shape [{len(y)}] (one per row), got {list(u.shape)}")
    if not np.isfinite(u).all():
        raise DataError("uncertainties must be finite")
    return ((y - m) ** 2).mean(axis=1), u


def _rmse(squared: np.ndarray, kept: np.ndarray) -> float:
    return float(np.sqrt(squared[kept].mean())) if kept.any() else math.nan


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value
