"""Evaluating a tf_keras model on arrays: its inference outputs, its score, and the budget a score is held to.

Every step that measures a model (sparsity, compact, the pipeline, benchmarks) uses these, so a
model is always evaluated the same way: direct calls in inference mode, in large batches, no
``predict`` function to trace per model. A classifier (softmax or logits) is scored by its
accuracy, a regressor by its RMSE against the targets (:class:`Metric`); a :class:`Budget` says how
much worse than the original model a score may get, in the metric's own terms.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from deploykit.core.task import OutputKind, Task
from deploykit.stats import rmse_increase


class Metric(str, enum.Enum):
    """The figure a model is scored by on the test split (also the records' field that holds it)."""

    ACCURACY = "accuracy"  # share of rows whose argmax equals the label: higher is better
    RMSE = "rmse"  # root mean squared error against the targets, in their units: lower is better

    __str__ = str.__str__

    @classmethod
    def of(cls, task: Task) -> Metric:
        return cls.RMSE if task is Task.REGRESSION else cls.ACCURACY


def outputs(model, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The model's inference outputs (direct calls: no per-model predict function to trace)."""
    parts = [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, *model.output_shape[1:]), np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    """Probabilities of logits over the last axis (what a logits classifier's exported graph computes)."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def main_outputs(out: np.ndarray, kind: OutputKind) -> np.ndarray:
    """A model's outputs as its artifacts' main output gives them: a classifier's probabilities [N, C] (logits
    softmaxed, a binary head's [1 - p, p]), a regressor's predictions as they are (its TaskSpec's probabilities)."""
    from deploykit.core.taskspec import spec_of

    return spec_of(kind).probabilities(out)


def output_scale(out: np.ndarray) -> float:
    """What an absolute output tolerance is multiplied by: 1 for probabilities, the RMS of larger outputs.

    A float32 rewrite (fold, compact) changes outputs by rounding, relative to their size: 1e-5 of a
    probability, but 1e-5 x 150 of a regressor predicting values near 150.
    """
    out = np.asarray(out, np.float64)
    return max(1.0, float(np.sqrt(np.mean(out**2)))) if out.size else 1.0


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose predicted class equals the label (argmax; a binary head: P(class 1) > 0.5)."""
    return score(model, x, y, Task.CLASSIFICATION)


def rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Root mean squared error over every row and target (targets [N] compare with predictions [N, 1])."""
    p = np.asarray(predictions, np.float64).reshape(len(predictions), -1)
    t = np.asarray(targets, np.float64).reshape(len(targets), -1)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def score_outputs(out: np.ndarray, y: np.ndarray, task: Task, kind: OutputKind | None = None) -> float:
    """The test figure of outputs already computed: accuracy (classification) or RMSE (regression).

    ``kind`` says how a one-column classifier output gives its class (sigmoid: p > 0.5; a logit: z > 0);
    wider outputs take their argmax whatever the kind.
    """
    if task is Task.REGRESSION:
        return rmse(out, y)
    out = np.asarray(out)
    if out.shape[-1] == 1:
        from deploykit.core.taskspec import spec_of

        return float(np.mean(spec_of(kind or OutputKind.SIGMOID).predicted_class(out) == y))
    return float(np.mean(np.argmax(out, axis=-1) == y))


def score(model, x: np.ndarray, y: np.ndarray, task: Task = Task.CLASSIFICATION) -> float:
    """The model's :class:`Metric` for ``task`` on ``(x, y)`` (a one-unit classifier's kind read off its last layer)."""
    return score_model_outputs(model, outputs(model, x), y, task)


def score_model_outputs(model, out: np.ndarray, y: np.ndarray, task: Task = Task.CLASSIFICATION) -> float:
    """:func:`score_outputs` of ``model``'s outputs ``out``, however they were computed (eager or traced), a one-unit
    classifier's kind read off the model's last layer."""
    kind = one_unit_kind(model) if task is Task.CLASSIFICATION and out.shape[-1] == 1 else None
    return score_outputs(out, y, task, kind)


def one_unit_kind(model) -> OutputKind:
    """How a one-unit classifier's output gives its class: a sigmoid's p > 0.5, else a logit's z > 0."""
    from deploykit.core.task import layer_kind

    return OutputKind.SIGMOID if layer_kind(model) is OutputKind.SIGMOID else OutputKind.BINARY_LOGITS


def predicted_classes(model, out: np.ndarray) -> np.ndarray:
    """The class each row of ``model``'s outputs ``out`` predicts: the argmax, or a one-unit head's by its kind
    (an argmax of one column is class 0 on every row)."""
    out = np.asarray(out)
    if out.shape[-1] != 1:
        return out.argmax(axis=-1)
    from deploykit.core.taskspec import spec_of

    return spec_of(one_unit_kind(model)).predicted_class(out)


@dataclass(frozen=True)
class RegressionErrors:
    """How far predictions are from a reference (the Keras model, or the targets), per value."""

    max_abs_error: float
    max_rel_error: (
        float  # |p - r| / max(|r|, RMS of r): relative to each value, or to the typical size for values near 0
    )
    rmse: float

    @classmethod
    def between(cls, predictions: np.ndarray, reference: np.ndarray) -> RegressionErrors:
        p = np.asarray(predictions, np.float64).reshape(len(predictions), -1)
        r = np.asarray(reference, np.float64).reshape(len(reference), -1)
        diff = np.abs(p - r)
        floor = max(
            float(np.sqrt(np.mean(r**2))) if r.size else 0.0, 1e-12
        )  # values near 0: relative to the typical size
        return cls(
            float(diff.max(initial=0.0)),
            float((diff / np.maximum(np.abs(r), floor)).max(initial=0.0)),
            float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0,
        )


@dataclass(frozen=True)
class Budget:
    """How much worse than the original model a kept model or shipped artifact may score.

    ``limit`` is in the metric's own terms: for accuracy, a drop in accuracy units (0.01 = one
    point, ``max_accuracy_drop``); for RMSE, an increase as a fraction of the original's test RMSE
    (0.05 = 5%, ``max_rmse_increase``): an absolute RMSE figure would mean nothing across targets'
    units, a fraction of the original's error does.
    """

    metric: Metric
    limit: float

    def shortfall(self, original: float, value: float) -> float:
        """How much worse ``value`` is than ``original``, in the limit's terms (<= 0: as good or better)."""
        if self.metric is Metric.ACCURACY:
            return original - value
        return rmse_increase(original, value)

    def within(self, original: float, value: float) -> bool:
        return self.shortfall(original, value) <= self.limit + 1e-12

    def describe(self) -> str:
        """``accuracy drop <= 1 pt`` / ``RMSE increase <= 5% of the original``."""
        if self.metric is Metric.ACCURACY:
            return f"accuracy drop <= {100 * self.limit:g} pt"
        return f"RMSE increase <= {100 * self.limit:g}% of the original"

    def change(self, original: float, value: float) -> str:
        """The change as a person reads it: ``-1.20 pt`` / ``+3.4% RMSE``."""
        if self.metric is Metric.ACCURACY:
            return f"{100 * (value - original):+.2f} pt"
        return f"{100 * self.shortfall(original, value):+.1f}% RMSE"
