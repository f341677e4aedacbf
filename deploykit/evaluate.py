"""Evaluating a tf_keras model on arrays: its inference outputs and its accuracy.

Every step that measures a model (sparsity, compact, the pipeline, benchmarks) uses these two, so a
model is always evaluated the same way: direct calls in inference mode, in large batches, no
``predict`` function to trace per model.
"""

from __future__ import annotations

import numpy as np


def outputs(model, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The model's inference outputs (direct calls: no per-model predict function to trace)."""
    parts = [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, *model.output_shape[1:]), np.float32)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose argmax output equals the label."""
    return float(np.mean(np.argmax(outputs(model, x), axis=-1) == y))
