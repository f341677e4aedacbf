"""Calibration metrics and reliability diagrams.

- accuracy: share of rows whose argmax is the label;
- nll: mean of -log p(label) (p floored at 1e-12);
- brier: mean over rows of sum_c (p_c - onehot_c)^2 (multi-class Brier, in [0, 2]);
- ece: equal-width confidence bins (i/B, (i+1)/B] on the max probability;
  sum over bins of (rows in bin / N) * |accuracy in bin - mean confidence in bin|.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploykit.atomic import atomic_path
from deploykit.configs import is_int
from deploykit.errors import DataError, UsageError
from deploykit.records import Record

DEFAULT_BINS = 15
_NLL_FLOOR = 1e-12


@dataclass
class CalibrationReport(Record):
    """Calibration of predicted probabilities against labels."""

    accuracy: float
    nll: float
    brier: float
    ece: float
    count: int
    bins: int
    bin_confidence: list[float] = field(default_factory=list)  # mean confidence per bin (NaN when empty)
    bin_accuracy: list[float] = field(default_factory=list)  # accuracy per bin (NaN when empty)
    bin_count: list[int] = field(default_factory=list)
    plot_path: Path | None = None


def calibration(
    y_true,
    probs,
    plot_path: str | os.PathLike | None = None,
    bins: int = DEFAULT_BINS,
    title: str = "Reliability diagram",
) -> CalibrationReport:
    """Accuracy, NLL, Brier score and ECE of ``probs`` [N, C] against integer labels ``y_true`` [N].

    With ``plot_path`` a reliability-diagram PNG is written there (atomically).
    """
    y, p = check_labels_and_probs(y_true, probs)
    if not is_int(bins) or bins < 1:
        raise UsageError(f"bins must be an integer >= 1, got {bins!r}")
    n = len(y)
    rows = np.arange(n)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    onehot = np.zeros_like(p)
    onehot[rows, y] = 1.0
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf, bin_acc = conf_sum / counts, acc_sum / counts
    report = CalibrationReport(
        accuracy=float(correct.mean()),
        nll=float(-np.log(np.maximum(p[rows, y], _NLL_FLOOR)).mean()),
        brier=float(((p - onehot) ** 2).sum(axis=1).mean()),
        ece=float(np.abs(acc_sum - conf_sum).sum() / n),
        count=n,
        bins=int(bins),
        bin_confidence=bin_conf.tolist(),
        bin_accuracy=bin_acc.tolist(),
        bin_count=counts.tolist(),
    )
    if plot_path is not None:
        report.plot_path = reliability_diagram({title: report}, plot_path)
    return report


def check_labels_and_probs(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 [N] and probabilities as float64 [N, C], or a DataError naming the problem."""
    y = np.asarray(y_true)
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise DataError(f"probabilities must have shape [N, C] with N >= 1 and C >= 2, got {list(p.shape)}")
    if y.shape != (p.shape[0],):
        raise DataError(f"labels must have shape [{p.shape[0]}] (one per row of probabilities), got {list(y.shape)}")
    if p.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        raise DataError(f"labels must be integers and probabilities numbers, got {y.dtype} and {p.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise DataError(f"labels must be class ids in [0, {p.shape[1] - 1}], got values from {y.min()} to {y.max()}")
    p = p.astype(np.float64)
    if not np.isfinite(p).all() or p.min() < 0:
        raise DataError("probabilities must be finite and non-negative")
    worst = float(np.abs(p.sum(axis=1) - 1).max())
    if worst > 1e-3:
        raise DataError(
            f"probabilities must sum to 1 per row (off by up to {worst:.3g}); pass softmax outputs, not logits"
        )
    return y.astype(np.int64), p


def reliability_diagram(reports: dict[str, CalibrationReport], path: str | os.PathLike) -> Path:
    """One reliability-diagram panel per report, side by side, as a PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(reports), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    for k, (title, r) in enumerate(reports.items()):
        ax = fig.add_subplot(1, len(reports), k + 1)
        edges = np.linspace(0, 1, r.bins + 1)
        acc = np.nan_to_num(np.asarray(r.bin_accuracy, dtype=float))
        ax.bar(edges[:-1], acc, width=1 / r.bins, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
        conf = np.asarray(r.bin_confidence, dtype=float)
        filled = np.asarray(r.bin_count) > 0
        centers = (edges[:-1] + edges[1:]) / 2
        ax.plot(centers[filled], conf[filled], "o", color="tab:orange", markersize=4, label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        for x, height, n in zip(centers, acc, r.bin_count):  # how many rows each bar stands on
            if n:
                ax.annotate(
                    f"{n}", (x, height), ha="center", va="bottom", fontsize=6, xytext=(0, 1), textcoords="offset points"
                )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.08),
            xlabel="confidence (bar labels: rows in the bin)",
            ylabel="accuracy",
            title=f"{title}\nECE {r.ece:.4f} · acc {r.accuracy:.4f}",
        )
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
