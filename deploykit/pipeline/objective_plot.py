"""The latency-accuracy front (``latency_vs_accuracy.png``), drawn beside the size-accuracy one.

Each shipped ONNX / TFLite artifact at its time per example at ``[plan] batch_size`` (log scale) against its test
figure, the original model's float32 file in each runtime as a reference, the Pareto front (faster or more
accurate) and the budget line; the objective's recommendation is ringed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from deploykit.core.evaluate import Metric
from deploykit.pipeline.plots import _COLORS, _MARKERS, _figure, _human, _save, pareto_front
from deploykit.pipeline.records import ArtifactRow, Verdict

LATENCY_FRONT_PLOT = "latency_vs_accuracy.png"


def latency_vs_accuracy(
    rows: Sequence[ArtifactRow],
    rec,  # deploykit.pipeline.objective.Recommendation (not imported: it imports this module)
    path: str | os.PathLike,
    budget: float | None = None,
    metric: Metric = Metric.ACCURACY,
    original=None,
) -> Path:
    """Test accuracy (or RMSE) against µs per example at the batch size; see the module docstring. ``original``: the
    original model's figures (ModelFigures; default: the rows' reference row)."""
    rmse = metric is Metric.RMSE
    value = (lambda r: r.rmse) if rmse else (lambda r: 100 * r.accuracy)  # noqa: E731
    better = -1.0 if rmse else 1.0
    per_example = {c.file: 1000 * c.batch_ms / rec.batch_size for c in rec.candidates}
    timed = [r for r in rows if r.file in per_example and getattr(r, metric.value) is not None]
    fig = _figure(8.5, 5.2)
    ax = fig.add_subplot(1, 1, 1)
    for r in timed:
        ax.scatter(
            per_example[r.file],
            value(r),
            s=70,
            color=_COLORS.get(r.format, "black"),
            marker=_MARKERS.get(r.precision, "o"),
            edgecolor="black",
            zorder=4,
        )
        ax.annotate(r.file, (per_example[r.file], value(r)), textcoords="offset points", xytext=(6, 4), fontsize=7)
    reference = original or next((r for r in rows if r.verdict is Verdict.REFERENCE), None)
    if reference is not None and getattr(reference, metric.value) is None:
        reference = None
    if reference is not None:
        for fmt, times in rec.originals.items():
            x = 1000 * times["batch_ms"] / rec.batch_size
            ax.scatter(x, value(reference), s=140, marker="*", color=_COLORS.get(fmt, "black"), edgecolor="black")
            ax.annotate(
                f"original float32 {fmt}",
                (x, value(reference)),
                textcoords="offset points",
                xytext=(6, -10),
                fontsize=7,
            )
    front = pareto_front([(per_example[r.file], better * value(r)) for r in timed])
    if front:
        ax.step(
            [p[0] for p in front],
            [better * p[1] for p in front],
            where="post",
            linestyle="--",
            color="tab:green",
            alpha=0.7,
            label="Pareto front (faster or more accurate)",
        )
    chosen = next((r for r in timed if r.file == rec.chosen), None)
    if chosen is not None:
        ax.scatter(
            per_example[chosen.file],
            value(chosen),
            s=260,
            facecolor="none",
            edgecolor="tab:red",
            linewidth=2,
            zorder=5,
            label=f"recommended ({rec.objective})",
        )
    if reference is not None and budget is not None:
        line = reference.rmse * (1 + budget) if rmse else 100 * (reference.accuracy - budget)
        ax.axhline(line, color="tab:red", linestyle=":", linewidth=1, label="budget")
    ax.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(_human("µs"))
    xs = [per_example[r.file] for r in timed] + [1000 * t["batch_ms"] / rec.batch_size for t in rec.originals.values()]
    narrow = bool(xs) and max(xs) < 10 * min(xs)  # within a decade: label the minor ticks too
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)))
    ax.xaxis.set_minor_formatter(_human("µs") if narrow else NullFormatter())
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.margins(x=0.15, y=0.15)
    ax.set(
        xlabel=f"µs per example at batch {rec.batch_size} (median, log scale)",
        ylabel="test RMSE (target units)" if rmse else "test accuracy (%)",
        title=f"{'RMSE' if rmse else 'Accuracy'} vs latency: shipped artifacts and the original (stars)",
    )
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)
