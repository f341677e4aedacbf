"""The report's PNG plots (matplotlib, Agg canvas; written atomically).

The MC reliability diagram is drawn by :func:`deploykit.uncertainty.compare`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deploykit.atomic import atomic_path
from deploykit.pipeline.records import ArtifactRow, LayerSparsityRow

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


def accuracy_vs_size(rows: Sequence[ArtifactRow], path: str | os.PathLike) -> Path:
    """Test accuracy against gzip size (log scale) for every artifact measured."""
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    measured = [r for r in rows if r.accuracy is not None]
    for r in measured:
        ax.scatter(r.gzip_bytes / 1024, 100 * r.accuracy, s=60, color=_COLORS.get(r.format, "black"),
                   marker=_MARKERS.get(r.precision, "o"), edgecolor="black", zorder=3)
    # one label per cluster of points that would overlap (same accuracy, gzip sizes within 15%)
    clusters: list[list[ArtifactRow]] = []
    for r in sorted(measured, key=lambda r: (r.accuracy, r.gzip_bytes)):
        last = clusters[-1][-1] if clusters else None
        if last is not None and abs(last.accuracy - r.accuracy) < 5e-4 and r.gzip_bytes < 1.15 * last.gzip_bytes:
            clusters[-1].append(r)
        else:
            clusters.append([r])
    for group in clusters:
        ax.annotate("\n".join(r.file for r in group), (group[0].gzip_bytes / 1024, 100 * group[0].accuracy),
                    textcoords="offset points", xytext=(6, -4), fontsize=7, va="top")
    ax.set_xscale("log")
    ax.set(xlabel="gzip size (KiB, log scale)", ylabel="test accuracy (%)", title="Accuracy vs gzip size per artifact")
    ax.grid(True, which="both", alpha=0.3)
    handles = [ax.scatter([], [], color=c, label=f, edgecolor="black") for f, c in _COLORS.items() if any(r.format == f for r in rows)]
    handles += [ax.scatter([], [], color="white", marker=m, label=p, edgecolor="black") for p, m in _MARKERS.items()
                if any(r.precision == p for r in rows)]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    return _save(fig, path)


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
                ax.annotate(f"{values[layer].weights:,}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6, rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, layers, rotation=20, fontsize=8)
    ax.set(ylabel="zero weights (%)", ylim=(0, 110), title="Per-layer kernel sparsity (labels: kernel weights)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency(rows: Sequence[ArtifactRow], path: str | os.PathLike) -> Path:
    """Batch-1 latency and batch-256 throughput per artifact, coloured by runtime."""
    timed = [r for r in rows if r.latency_b1_ms is not None]
    fig = _figure(11, max(3.0, 0.35 * len(timed) + 1.6))
    labels = [f"{r.file} ({r.runtime})" for r in timed]
    colors = [_COLORS.get(r.format, "black") for r in timed]
    y = np.arange(len(timed))
    for k, (title, values, unit) in enumerate((
        ("batch-1 latency (median)", [r.latency_b1_ms for r in timed], "ms, log scale"),
        ("batch-256 throughput", [r.throughput_b256 or 0.0 for r in timed], "examples / s, log scale"),
    )):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.barh(y, values, color=colors, edgecolor="black")
        ax.set_yticks(y, labels if k == 0 else [""] * len(timed), fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set(xlabel=unit, title=title)
        ax.grid(True, axis="x", which="both", alpha=0.3)
        for yy, v in zip(y, values):
            if v:
                ax.annotate(f"{v:.3g}", (v, yy), va="center", fontsize=7, xytext=(3, 0), textcoords="offset points")
    return _save(fig, path)
