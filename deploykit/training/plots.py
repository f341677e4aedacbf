"""PNG plots of training: the learning curves and the learning-rate finder's loss-vs-rate curve.

Figures are drawn with matplotlib's Agg canvas directly (no global backend
switch, no display needed) and written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from deploykit.atomic import atomic_path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def learning_curve_png(history: dict[str, list[float]], path: str | os.PathLike, best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch (training and validation), the restored best epoch marked."""
    fig = _figure(10, 4)
    epochs = list(range(1, len(history.get("loss", [])) + 1))
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                ax.plot(epochs, history[key], style, label=key.replace("_", " "))
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("learning curves")
    fig.tight_layout()
    return _save(fig, path)


def lr_finder_png(
    rates: list[float],
    losses: list[float],
    smoothed: list[float],
    picked: float,
    path: str | os.PathLike,
    min_loss_rate: float | None = None,
) -> Path:
    """Loss against learning rate on a log x axis, with the picked rate marked."""
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    ax.plot(rates, losses, alpha=0.35, label="batch loss")
    ax.plot(rates, smoothed, label="smoothed loss")
    if min_loss_rate:
        ax.axvline(min_loss_rate, color="grey", linestyle=":", label=f"lowest smoothed loss ({min_loss_rate:.2g})")
    ax.axvline(picked, color="red", linestyle="--", label=f"picked max rate ({picked:.2g})")
    ax.set_xscale("log")
    finite = [v for v in smoothed if v == v]
    if finite:  # keep the explosion from flattening the interesting part
        ax.set_ylim(min(finite) * 0.9 if min(finite) > 0 else min(finite), max(finite[0] * 1.5, min(finite) * 4))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title("learning-rate finder")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
