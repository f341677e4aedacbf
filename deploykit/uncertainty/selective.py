"""Selective prediction: a threshold on one uncertainty measure, chosen on the validation split, served in-graph.

A client that must decide when to trust a prediction needs a decision, not a
number. The threshold is the one that keeps the most validation rows while the
kept rows reach ``target_accuracy`` (or that keeps at least
``target_coverage`` of them); the rule is "abstain when measure > threshold".
Cuts fall between distinct measure values (the midpoint), so float32 rounding
in the graph cannot move a row across. Small validation splits make the target
noisy: the test-split coverage and accuracy are what to report.

The decision is stored twice: in ``metadata_props`` under
``deploykit.selective`` (JSON: measure, threshold, target kind and value,
validation coverage and accuracy, the rule), and as an extra graph output
``abstain`` (bool [N], = measure > threshold) computed from the model's own
outputs, so onnxruntime and Triton clients get it without deploykit code.

The default measure is the predictive entropy: it works for every model and
uses the whole distribution; ``MUTUAL_INFORMATION`` needs an MC or ensemble
model (see :mod:`deploykit.uncertainty.measures`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.configs import Config, number
from deploykit.errors import ConfigError, DataError, UsageError
from deploykit.contract import ABSTAIN_OUTPUT, OUTPUT_NAME, OUTPUT_NAMES
from deploykit.contract import ABSTAIN_RULE as RULE
from deploykit.contract import SELECTIVE_KEY as METADATA_KEY
from deploykit.records import Record
from deploykit.uncertainty.graph_ops import GraphEditor, get_prop, set_props, toposort
from deploykit.uncertainty.measures import Measure

ABSTAIN_ALL = -1.0  # every measure is >= 0: this threshold abstains on every row


@dataclass(frozen=True)
class SelectiveTarget(Config):
    """What the threshold must reach on the validation split: exactly one of the two, validated on construction."""

    target_accuracy: float | None = 0.99
    target_coverage: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.target_accuracy, self.target_coverage) if v is not None]
        if len(given) != 1:
            raise ConfigError("give exactly one of target_accuracy and target_coverage")
        value = given[0]
        name = "target_accuracy" if self.target_accuracy is not None else "target_coverage"
        number(name, value, 0.0, 1.0, open_low=True)


@dataclass
class SelectiveThreshold(Record):
    """The chosen threshold and what it gave on the split it was chosen on."""

    measure: Measure
    threshold: float
    target: SelectiveTarget
    coverage: float  # on the validation split
    accuracy: float  # of the kept validation rows (NaN when none kept)
    count: int

    def metadata_value(self) -> str:
        return json.dumps({"measure": self.measure.value, "threshold": self.threshold, "rule": RULE,
                           "target_accuracy": self.target.target_accuracy, "target_coverage": self.target.target_coverage,
                           "validation_coverage": self.coverage, "validation_accuracy": _finite(self.accuracy),
                           "count": self.count})


@dataclass
class SelectiveResult(Record):
    """A threshold applied to a labelled split."""

    coverage: float
    accuracy: float  # of the kept rows (NaN when none kept)
    kept: int
    count: int


def choose_threshold(y_val, predicted, uncertainty, measure: Measure,
                     target: SelectiveTarget = SelectiveTarget()) -> SelectiveThreshold:
    """The threshold on ``uncertainty`` [N] that meets ``target`` on the validation split with the most rows kept."""
    y, pred, u = _check(y_val, predicted, uncertainty)
    order = np.argsort(u, kind="stable")
    su, correct = u[order], (pred[order] == y[order])
    n = len(u)
    k = np.arange(1, n + 1)
    cut_ok = np.r_[su[:-1] < su[1:], True]  # a cut after row k-1 separates distinct values
    if target.target_accuracy is not None:
        ok = cut_ok & (np.cumsum(correct) / k >= target.target_accuracy - 1e-12)
        keep = int(k[ok].max()) if ok.any() else 0
    else:
        ok = cut_ok & (k >= math.ceil(target.target_coverage * n - 1e-9))
        keep = int(k[ok].min())
    if keep == 0:
        threshold = ABSTAIN_ALL
    elif keep == n:
        threshold = float(su[-1]) + max(1e-6, abs(float(su[-1])) * 1e-6)
    else:
        threshold = float((su[keep - 1] + su[keep]) / 2)
    threshold = float(np.float32(threshold))
    kept = u <= threshold
    acc = float((pred[kept] == y[kept]).mean()) if kept.any() else math.nan
    return SelectiveThreshold(measure, threshold, target, float(kept.mean()), acc, n)


def apply_threshold(y, predicted, uncertainty, threshold: float) -> SelectiveResult:
    """Coverage and kept-row accuracy of "abstain when uncertainty > threshold" on a labelled split."""
    y, pred, u = _check(y, predicted, uncertainty)
    kept = u <= threshold
    acc = float((pred[kept] == y[kept]).mean()) if kept.any() else math.nan
    return SelectiveResult(float(kept.mean()), acc, int(kept.sum()), len(u))


def risk_coverage(y, predicted, uncertainty) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and risk (error rate of the kept rows) when keeping the k least uncertain rows, k = 1..N."""
    y, pred, u = _check(y, predicted, uncertainty)
    wrong = pred[np.argsort(u, kind="stable")] != y[np.argsort(u, kind="stable")]
    k = np.arange(1, len(u) + 1)
    return k / len(u), np.cumsum(wrong) / k


def risk_coverage_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
                       target_accuracy: float | None = None) -> Path:
    """Risk-coverage curves (one per method) in one PNG, written atomically."""
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
    ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage (share of rows kept)", ylabel="risk (error rate of kept rows)",
           title="Risk-coverage")
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
    from onnx import TensorProto, helper

    ed = GraphEditor(proto, "selective")
    outputs = {o.name for o in ed.graph.output}
    if ABSTAIN_OUTPUT in outputs:
        raise UsageError("this ONNX model already has an abstain output")
    measure_tensor = _measure_tensor(ed, chosen.measure, outputs, OUTPUT_NAMES)
    ed.op("Greater", [measure_tensor, ed.const(chosen.threshold)], output=ABSTAIN_OUTPUT)
    ed.graph.output.append(helper.make_tensor_value_info(ABSTAIN_OUTPUT, TensorProto.BOOL, ["N"]))
    toposort(ed.graph)
    set_props(proto, {METADATA_KEY: chosen.metadata_value()})
    onnx.checker.check_model(proto, full_check=True)


def read_selective(proto) -> dict | None:
    """The ``deploykit.selective`` entry of a model's metadata_props, or None."""
    raw = get_prop(proto, METADATA_KEY)
    return json.loads(raw) if raw else None


def _measure_tensor(ed: GraphEditor, measure: Measure, outputs: set[str], contract: tuple[str, ...]) -> str:
    mean, _, entropy, mutual, _ = contract
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
        raise DataError(f"labels, predictions and uncertainties must be [N] arrays of one length N >= 1, "
                        f"got {list(y.shape)}, {list(pred.shape)}, {list(u.shape)}")
    if not np.isfinite(u).all():
        raise DataError("uncertainties must be finite")
    return y, pred, u


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value
