"""The report's PNG plots (matplotlib, Agg canvas; written atomically).

The MC reliability diagram is drawn by :func:`deploykit.uncertainty.compare`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deploykit.atomic import atomic_path
from deploykit.core.evaluate import Metric
from deploykit.pipeline.records import ArtifactRow, LayerSparsityRow, Stage, Try, Verdict

ACCURACY_PLOT = "accuracy_vs_size.png"
SPARSITY_PLOT = "sparsity.png"
LATENCY_PLOT = "latency.png"
RELIABILITY_PLOT = "reliability.png"

_COLORS = {"keras": "tab:gray", "onnx": "tab:blue", "tflite": "tab:orange", "onnx-mc": "tab:purple"}
_MARKERS = {"float32": "o", "float16": "s", "int8": "^"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _kib_axis(axis) -> None:
    """A log axis of KiB with ticks at 1-2-5 steps labelled plainly ("2", "50", "1,000"), not as 10^x."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:.2g}"))
    axis.set_minor_formatter(NullFormatter())


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (size, accuracy) points no other point beats on both: smaller or equal and more accurate or equal."""
    front: list[tuple[float, float]] = []
    for size, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((size, acc))
    return front


def accuracy_vs_size(
    rows: Sequence[ArtifactRow],
    tries: Sequence[Try],
    path: str | os.PathLike,
    budget: float | None = None,
    metric: Metric = Metric.ACCURACY,
) -> Path:
    """Test accuracy (or a regressor's RMSE) against gzip size (log scale): every try and artifact, their Pareto
    front, the shipped points marked. ``budget`` is in the metric's terms (accuracy points, or an RMSE fraction)."""
    rmse = metric is Metric.RMSE
    value = (lambda o: o.rmse) if rmse else (lambda o: 100 * o.accuracy)  # noqa: E731
    better = -1.0 if rmse else 1.0  # the front keeps the lowest RMSE, the highest accuracy
    fig = _figure(8.5, 5.2)
    ax = fig.add_subplot(1, 1, 1)
    measured = [r for r in rows if getattr(r, metric.value) is not None and r.gzip_bytes]
    tried = [t for t in tries if getattr(t, metric.value) is not None and t.gzip_bytes]
    for stage, marker, label in ((Stage.SPARSITY, "o", "sparsity try (.keras gzip)"), (Stage.INT8, "D", "int8 try")):
        pts = [t for t in tried if t.stage is stage]
        if pts:
            ax.scatter(
                [t.gzip_bytes / 1024 for t in pts],
                [value(t) for t in pts],
                s=28,
                marker=marker,
                facecolor="none",
                edgecolor="gray",
                zorder=2,
                label=label,
            )
    for r in measured:
        shipped = r.verdict.shipped
        ax.scatter(
            r.gzip_bytes / 1024,
            value(r),
            s=70 if shipped else 50,
            color=_COLORS.get(r.format, "black"),
            marker=_MARKERS.get(r.precision, "o") if shipped else "X",
            edgecolor="black",
            linewidth=1.2 if shipped else 0.5,
            alpha=1.0 if shipped else 0.6,
            zorder=4,
        )
    front = [
        (x, better * y)
        for x, y in pareto_front(
            [(t.gzip_bytes / 1024, better * value(t)) for t in tried]
            + [(r.gzip_bytes / 1024, better * value(r)) for r in measured]
        )
    ]
    if front:  # the best figure reached at each size or less: a step to each front point, flat to the right
        right = max([t.gzip_bytes / 1024 for t in tried] + [r.gzip_bytes / 1024 for r in measured])
        xs, ys = [p[0] for p in front] + [right], [p[1] for p in front] + [front[-1][1]]
        ax.step(
            xs,
            ys,
            where="post",
            linestyle="--",
            color="tab:green",
            alpha=0.7,
            zorder=1,
            label="Pareto front (every try and artifact)",
        )
        ax.scatter(
            [p[0] for p in front],
            [p[1] for p in front],
            s=150,
            facecolor="none",
            edgecolor="tab:green",
            linewidth=1.5,
            zorder=3,
        )
    reference = next((r for r in rows if r.verdict is Verdict.REFERENCE and getattr(r, metric.value) is not None), None)
    if reference is not None and budget is not None:
        line, text = (
            (reference.rmse * (1 + budget), f"budget: RMSE {100 * budget:g}% above the original")
            if rmse
            else (100 * (reference.accuracy - budget), f"budget: {100 * budget:g} pt below the original")
        )
        ax.axhline(line, color="tab:red", linestyle=":", linewidth=1, zorder=1, label=text)
    close = 0.01 * max((value(r) for r in measured), default=0.0) if rmse else 0.15  # overlapping labels: 0.15 pt, 1%
    _label_shipped(ax, [r for r in measured if r.verdict.shipped], value, close)
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.15)  # room for the labels inside the frame
    _kib_axis(ax.xaxis)
    name = "RMSE" if rmse else "Accuracy"
    ax.set(
        xlabel="gzip size (KiB, log scale)",
        ylabel="test RMSE (target units)" if rmse else "test accuracy (%)",
        title=f"{name} vs gzip size: every try; shipped artifacts filled, rejected crossed",
    )
    ax.grid(True, which="major", alpha=0.3)
    handles = [
        ax.scatter([], [], color=c, label=f, edgecolor="black")
        for f, c in _COLORS.items()
        if any(r.format == f for r in rows)
    ]
    handles += [
        ax.scatter([], [], color="white", marker=m, label=p, edgecolor="black")
        for p, m in _MARKERS.items()
        if any(r.precision == p for r in rows)
    ]
    if any(not r.verdict.shipped for r in measured):
        handles.append(ax.scatter([], [], color="gray", marker="X", label="rejected", edgecolor="black", linewidth=0.5))
    extra = [h for h, l in zip(*ax.get_legend_handles_labels()) if "try" in l or "Pareto" in l or "budget" in l]
    ax.legend(handles=handles + extra, fontsize=7, loc="upper right" if rmse else "lower right", ncol=2)
    return _save(fig, path)


def _label_shipped(ax, rows: Sequence[ArtifactRow], value=lambda r: 100 * r.accuracy, close: float = 0.15) -> None:
    """One label per cluster of shipped points that would overlap (figures within ``close``, sizes within 15%)."""
    clusters: list[list[ArtifactRow]] = []
    for r in sorted(rows, key=lambda r: (r.gzip_bytes, value(r))):
        last = clusters[-1][-1] if clusters else None
        if last is not None and abs(value(last) - value(r)) < close and r.gzip_bytes < 1.15 * last.gzip_bytes:
            clusters[-1].append(r)
        else:
            clusters.append([r])
    for k, group in enumerate(clusters):  # alternate above / below so neighbours do not collide
        above = k % 2 == 0
        ax.annotate(
            "\n".join(r.file for r in group),
            (group[0].gzip_bytes / 1024, value(group[0])),
            textcoords="offset points",
            xytext=(6, 6 if above else -6),
            fontsize=7,
            va="bottom" if above else "top",
        )


def layer_sparsity(rows: Sequence[LayerSparsityRow], path: str | os.PathLike) -> Path:
    """Per Dense layer: the share of zero kernel weights at each stage of the pipeline."""
    stages = list(dict.fromkeys(r.stage for r in rows))
    layers = list(dict.fromkeys(r.layer for r in rows))
    fig = _figure(max(5.0, 1.4 * len(layers) + 2.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(stages))
    x = np.arange(len(layers))
    for k, stage in enumerate(stages):
        values = {r.layer: r for r in rows if r.stage == stage}
        heights = [100 * values[l].sparsity if l in values else 0.0 for l in layers]
        bars = ax.bar(x + (k - (len(stages) - 1) / 2) * width, heights, width, label=stage, edgecolor="black")
        for bar, layer in zip(bars, layers):
            if layer in values:
                ax.annotate(
                    f"{values[layer].weights:,}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(x, layers, rotation=20, fontsize=8)
    ax.set(ylabel="zero weights (%)", ylim=(0, 110), title="Per-layer kernel sparsity (labels: kernel weights)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _human(unit: str):
    """Tick labels in the unit of the values with SI steps: 5 µs, 20 µs, 1 ms; 50k/s, 2M/s."""
    from matplotlib.ticker import FuncFormatter

    if unit == "µs":
        return FuncFormatter(lambda v, _p: f"{v:.3g} µs" if v < 1000 else f"{v / 1000:.3g} ms")
    return FuncFormatter(lambda v, _p: f"{v:.3g}" if v < 1e3 else f"{v / 1e3:.3g}k" if v < 1e6 else f"{v / 1e6:.3g}M")


def latency(rows: Sequence[ArtifactRow], path: str | os.PathLike) -> Path:
    """Batch-1 latency (µs) and batch-256 throughput per shipped artifact, coloured by runtime."""
    from matplotlib.ticker import LogLocator, NullFormatter

    timed = [r for r in rows if r.latency_b1_ms is not None and r.verdict.shipped]
    fig = _figure(11, max(3.0, 0.38 * len(timed) + 1.8))
    labels = [f"{r.file} ({r.runtime})" for r in timed]
    colors = [_COLORS.get(r.format, "black") for r in timed]
    y = np.arange(len(timed))
    for k, (title, values, unit, label) in enumerate(
        (
            ("batch-1 latency (median)", [1000 * r.latency_b1_ms for r in timed], "µs", "µs per call, log scale"),
            ("batch-256 throughput", [r.throughput_b256 or 0.0 for r in timed], "/s", "examples / s, log scale"),
        )
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.barh(y, values, color=colors, edgecolor="black")
        ax.set_yticks(y, labels if k == 0 else [""] * len(timed), fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        positive = [v for v in values if v > 0]
        if positive:  # room on the right for the value labels
            ax.set_xlim(min(positive) / 2, max(positive) * 6)
        decades = np.log10(max(positive) / min(positive)) if positive else 0.0
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0) if decades < 4 else (1.0,)))  # no crowded labels
        ax.xaxis.set_major_formatter(_human(unit))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelsize=7)
        ax.set(xlabel=label, title=title)
        ax.grid(True, axis="x", which="major", alpha=0.3)
        for yy, v in zip(y, values):
            if v:
                ax.annotate(
                    _human(unit)(v, None), (v, yy), va="center", fontsize=7, xytext=(3, 0), textcoords="offset points"
                )
    return _save(fig, path)
