"""The task as a type: one :class:`TaskSpec` per output kind, holding what every step asks of a model's output.

A step that reads a model's output (scoring, validation, export naming, the MC head, distillation,
temperature scaling) asks the spec of the model's :class:`~deploykit.core.task.OutputKind` instead of branching
on it: how the raw output becomes class probabilities, the predicted class, the per-class
log-probabilities a fine-tuning loss reads, the probabilities an exported graph appends, and the served
outputs. The kinds:

- ``probabilities``: a softmax [N, C], as it is;
- ``logits``: pre-softmax scores [N, C]: probabilities = softmax(logits);
- ``sigmoid``: one sigmoid unit [N, 1], P(class 1) as Keras' ``binary_crossentropy`` reads it:
  probabilities = [1 - p, p];
- ``binary_logits``: one linear unit [N, 1] trained on 0/1 labels: probabilities = [1 - sigmoid(z), sigmoid(z)];
- ``values``: a regressor's predictions, no classes.

A binary head's exported graph computes its two-class probabilities as ``Softmax(Concat(0, z))`` on the logit
``z`` (the input of the model's Sigmoid): exactly ``[1 - sigmoid(z), sigmoid(z)]``, and a softmax like every
other classifier's, so temperature scaling (a Div before the softmax), the MC head, ensembles, validation and
the server treat a binary model as a two-class classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploykit.core.contract import DETERMINISTIC_OUTPUTS
from deploykit.core.task import OutputKind, Task


@dataclass(frozen=True)
class TaskSpec:
    """What one output kind means: its task, whether it is pre-activation, whether one unit holds two classes."""

    kind: OutputKind
    task: Task
    from_logits: bool  # the output is pre-activation scores (softmax or sigmoid still to apply)
    binary: bool  # one unit for two classes: the output is P(class 1) or its logit, [N, 1]
    description: str
    activation_op: str = ""  # the ONNX op of the head's activation, which the MC graph must end in ("": none)

    @property
    def classification(self) -> bool:
        return self.task is Task.CLASSIFICATION

    @property
    def served_outputs(self) -> tuple[str, ...]:
        """The deterministic ONNX / TFLite outputs, the main one last (``contract.DETERMINISTIC_OUTPUTS``)."""
        return DETERMINISTIC_OUTPUTS[self.kind.value]

    def classes(self, width: int) -> int:
        """How many classes an output of ``width`` units holds (0 for a regressor)."""
        if not self.classification:
            return 0
        return 2 if self.binary else int(width)

    def probabilities(self, out) -> np.ndarray:
        """Class probabilities [N, C] of raw outputs (a regressor's predictions come back as they are)."""
        out = np.asarray(out)
        if not self.classification or self.kind is OutputKind.PROBABILITIES:
            return out
        if self.binary:
            p = out.reshape(len(out), -1)[:, :1].astype(np.float64)
            if self.from_logits:
                p = 0.5 * (1.0 + np.tanh(0.5 * p))  # sigmoid without overflow
            return np.concatenate([1.0 - p, p], axis=1).astype(np.float32)
        z = out.astype(np.float64)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    def predicted_class(self, out) -> np.ndarray:
        """The class of each row: argmax of the probabilities (a binary head: P(class 1) > 0.5)."""
        return self.probabilities(out).argmax(axis=-1)

    def tf_log_probabilities(self, y_pred):
        """Per-class log-probabilities [N, C] of a batch of outputs, in TensorFlow (what a fine-tuning loss reads)."""
        from deploykit.backend import tf

        if self.from_logits:
            return tf.nn.log_softmax(_tf_binary_logits(y_pred) if self.binary else y_pred, axis=-1)
        p = tf.concat([1.0 - y_pred, y_pred], axis=-1) if self.binary else y_pred
        return tf.math.log(tf.clip_by_value(p, 1e-7, 1.0))

    def tf_probabilities(self, out):
        """Class probabilities [N, C] of a batch of outputs, in TensorFlow (what the TFLite signature serves)."""
        from deploykit.backend import tf

        if self.from_logits:
            return tf.nn.softmax(_tf_binary_logits(out) if self.binary else out, axis=-1)
        if not self.classification or not self.binary:
            return out
        return tf.concat([1.0 - out, out], axis=-1)

    def onnx_probabilities(self, g, x: str, output: str | None = None) -> str:
        """The probabilities [N, C] of tensor ``x`` appended to an ONNX builder ``g`` (with ``op`` and ``const``).

        ``x`` is the logits of a LOGITS or binary head (for a ``sigmoid`` head, the input of its Sigmoid:
        see :func:`binary_logit`): a softmax of them, ``Softmax(Concat(0, z))`` for one unit.
        """
        if self.binary:
            x = g.op("Concat", [g.op("Mul", [x, g.const(0.0)]), x], axis=-1)
        attrs = {"output": output} if output else {}
        return g.op("Softmax", [x], axis=-1, **attrs)

    def onnx_binary_of_probability(self, g, p: str, output: str | None = None) -> str:
        """``Concat(1 - p, p)``: a sigmoid head's probabilities when its graph has no Sigmoid to take the logit from."""
        attrs = {"output": output} if output else {}
        return g.op("Concat", [g.op("Sub", [g.const(1.0), p]), p], axis=-1, **attrs)


def _tf_binary_logits(z):
    """[0, z] per row: softmax of it is [1 - sigmoid(z), sigmoid(z)]."""
    from deploykit.backend import tf

    return tf.concat([tf.zeros_like(z), z], axis=-1)


SPECS = {
    spec.kind: spec
    for spec in (
        TaskSpec(
            OutputKind.PROBABILITIES, Task.CLASSIFICATION, False, False, "class probabilities (softmax)", "Softmax"
        ),
        TaskSpec(OutputKind.LOGITS, Task.CLASSIFICATION, True, False, "class logits (probabilities = softmax)"),
        TaskSpec(
            OutputKind.SIGMOID,
            Task.CLASSIFICATION,
            False,
            True,
            "one sigmoid unit: P(class 1) of a binary classifier (probabilities = [1 - p, p])",
            "Sigmoid",
        ),
        TaskSpec(
            OutputKind.BINARY_LOGITS,
            Task.CLASSIFICATION,
            True,
            True,
            "one linear unit: the logit of a binary classifier (P(class 1) = sigmoid)",
        ),
        TaskSpec(OutputKind.VALUES, Task.REGRESSION, False, False, "regression predictions, one column per target"),
    )
}


def spec_of(kind: OutputKind | str) -> TaskSpec:
    """The :class:`TaskSpec` of an output kind (or its value)."""
    return SPECS[OutputKind(kind)]
