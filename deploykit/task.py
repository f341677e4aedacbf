"""What a model predicts: a class (softmax probabilities or logits) or values (regression).

Every step that reads a model's output (validation, export naming, the MC
graph's head, distillation, temperature scaling, serving) asks this module,
so a model is one :class:`Task` with one :class:`OutputKind` everywhere.
Pure Python (no numpy or TensorFlow): the server and the CLI's argument
parsing import it.

The output kind is read off the model's last layer (:func:`output_kind`):
a softmax (an activation, an ``Activation`` or a ``Softmax`` layer) gives
probabilities; anything else gives raw values, which are a classifier's
logits or a regressor's predictions. :func:`resolve_task` decides which,
from the task the user set, else from the labels, else from the shape.
"""

from __future__ import annotations

import enum
import logging

from deploykit.errors import UsageError

log = logging.getLogger(__name__)


class Task(str, enum.Enum):
    """What the model is for (``--task``, ``deploykit.task`` in the ONNX metadata)."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"

    __str__ = str.__str__


class OutputKind(str, enum.Enum):
    """What the model's output tensor holds."""

    PROBABILITIES = "probabilities"  # a softmax: rows sum to 1
    LOGITS = "logits"  # a classifier's pre-softmax scores: probabilities = softmax(logits)
    VALUES = "values"  # a regressor's predictions, one column per target

    __str__ = str.__str__


#: Activations whose output is a probability distribution over the last axis.
_SOFTMAX = frozenset({"softmax"})
#: Layer classes that are a softmax by themselves.
_SOFTMAX_LAYERS = frozenset({"Softmax"})


def is_softmax_spec(class_name: str, config: dict) -> bool:
    """True when a layer (class name and config) ends in a softmax over its last axis."""
    if class_name in _SOFTMAX_LAYERS:
        return True
    activation = config.get("activation")
    if isinstance(activation, dict):  # Keras 3 may serialize an activation as an object
        activation = (activation.get("config") or {}).get("name") or activation.get("class_name")
    return str(activation or "").lower() in _SOFTMAX


def output_kind(graph) -> OutputKind:
    """PROBABILITIES when the graph's output node is a softmax, else VALUES (logits or predictions: see resolve_task).

    ``graph`` is a :class:`deploykit.graph.Graph` (or anything with ``outputs`` and ``node(name).spec``).
    """
    spec = graph.node(graph.outputs[0]).spec
    return OutputKind.PROBABILITIES if is_softmax_spec(spec.class_name, spec.config) else OutputKind.VALUES


def resolve_task(kind: OutputKind, outputs: int, *, task: Task | None = None,
                 labels_are_classes: bool | None = None) -> tuple[Task, OutputKind]:
    """The model's task and output kind, from what the user set, else the labels, else the output width.

    ``outputs`` is the output's last-axis width; ``labels_are_classes`` says whether the data's labels are
    class ids (None: no data). A softmax output is a classifier; a regression task on it is a UsageError.
    Raw values with class labels (or ``task=CLASSIFICATION``) are logits; with continuous labels (or
    ``task=REGRESSION``) predictions. Without either, a width of 2 or more is taken for logits and a width
    of 1 for one regression target, said in one log line.
    """
    if kind is OutputKind.PROBABILITIES:
        if task is Task.REGRESSION:
            raise UsageError("--task regression: the model ends in a softmax, which makes it a classifier")
        return Task.CLASSIFICATION, kind
    if task is None and labels_are_classes is not None:
        task = Task.CLASSIFICATION if labels_are_classes else Task.REGRESSION
    if task is None:
        task = Task.CLASSIFICATION if outputs >= 2 else Task.REGRESSION
        log.info("the model's output has no softmax; taken for %s (%d output%s): set --task to change it",
                 "logits" if task is Task.CLASSIFICATION else "a regression", outputs, "s" * (outputs != 1))
    if task is Task.CLASSIFICATION and outputs < 2:
        raise UsageError(f"a classifier needs at least 2 outputs (one per class); the model has {outputs}: "
                         "is it a regression model (--task regression)?")
    return task, OutputKind.LOGITS if task is Task.CLASSIFICATION else OutputKind.VALUES


def model_task(model, task: Task | None = None, labels_are_classes: bool | None = None) -> tuple[Task, OutputKind]:
    """:func:`resolve_task` of a tf_keras model: its last layer read through the graph, its output width.

    Imports the graph reader (and so TensorFlow) only when called.
    """
    from deploykit.graph import graph_from_model
    from deploykit.multi_io import PACKED_OUTPUT

    width = model.output_shape[-1]
    graph = graph_from_model(model, unsafe=True)
    if graph.outputs == [PACKED_OUTPUT]:  # several outputs side by side: regression heads (deploykit.multi_io)
        if task is Task.CLASSIFICATION:
            raise UsageError("the model has several outputs, shipped as regression heads: --task classification does not apply")
        task = Task.REGRESSION
    return resolve_task(output_kind(graph), int(width or 0), task=task, labels_are_classes=labels_are_classes)


def main_output(names) -> str:
    """The output validation and serving read from a deterministic model: probabilities, else the prediction, else the first."""
    from deploykit.contract import OUTPUT_NAME, PREDICTION_NAME

    names = list(names)
    return next((n for n in (OUTPUT_NAME, PREDICTION_NAME) if n in names), names[0])
