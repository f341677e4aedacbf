"""What a model predicts: a class (softmax probabilities or logits) or values (regression).

Every step that reads a model's output (validation, export naming, the MC
graph's head, distillation, temperature scaling, serving) asks this module,
so a model is one :class:`Task` with one :class:`OutputKind` everywhere.
Pure Python (no numpy or TensorFlow): the server and the CLI's argument
parsing import it.

The output kind is read off the model's last layer (:func:`output_kind`):
a softmax (an activation, an ``Activation`` or a ``Softmax`` layer) gives
probabilities; one sigmoid unit a binary classifier's P(class 1); anything
else gives raw values, which are a classifier's logits (one unit: a binary
classifier's logit) or a regressor's predictions. :func:`resolve_task`
decides which, from the task the user set, else from the labels, else from
the shape. What each kind means to every step is its
:class:`deploykit.core.taskspec.TaskSpec`.
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
    SIGMOID = "sigmoid"  # one sigmoid unit: P(class 1) of a binary classifier (probabilities = [1 - p, p])
    BINARY_LOGITS = "binary_logits"  # one linear unit trained on 0/1 labels: P(class 1) = sigmoid(logit)

    __str__ = str.__str__


#: Output kinds whose activation makes the model a classifier, whatever the labels say (a softmax).
CLASSIFIER_HEADS = frozenset({OutputKind.PROBABILITIES})
#: Activations whose output is a probability distribution over the last axis.
_SOFTMAX = frozenset({"softmax"})
#: Layer classes that are a softmax by themselves.
_SOFTMAX_LAYERS = frozenset({"Softmax"})
#: Several sigmoid units read as a multi-label head: said in one line when the model meets 0/1 label columns.
MULTI_LABEL = (
    "the model ends in {units} sigmoid units: a multi-label head, read as {units} per-label probabilities and held "
    "to their RMSE against the 0/1 labels (the root of the Brier score)"
)
#: Several sigmoid units given class ids: what a multi-label head needs instead.
MULTI_LABEL_CLASSES = (
    "the model ends in {units} independent sigmoid units (a multi-label head), but the labels are class ids: give a "
    "0/1 label matrix [N, {units}], one column per label (one-hot rows are read as that matrix unless --task "
    "classification is given)"
)


def _activation_name(config: dict) -> str:
    activation = config.get("activation")
    if isinstance(activation, dict):  # Keras 3 may serialize an activation as an object
        activation = (activation.get("config") or {}).get("name") or activation.get("class_name")
    return str(activation or "").lower()


def is_softmax_spec(class_name: str, config: dict) -> bool:
    """True when a layer (class name and config) ends in a softmax over its last axis."""
    return class_name in _SOFTMAX_LAYERS or _activation_name(config) in _SOFTMAX


def is_sigmoid_spec(class_name: str, config: dict) -> bool:
    """True when a layer ends in a sigmoid (a Dense's activation, or an ``Activation("sigmoid")``)."""
    return _activation_name(config) == "sigmoid"


def kind_of_layer(class_name: str, config: dict) -> OutputKind:
    """What a model's last layer outputs: PROBABILITIES (softmax), SIGMOID, else VALUES (see resolve_task)."""
    if is_softmax_spec(class_name, config):
        return OutputKind.PROBABILITIES
    return OutputKind.SIGMOID if is_sigmoid_spec(class_name, config) else OutputKind.VALUES


def output_kind(graph) -> OutputKind:
    """PROBABILITIES for a softmax output node, SIGMOID for a sigmoid one, else VALUES (logits or predictions).

    ``graph`` is a :class:`deploykit.core.graph.Graph` (or anything with ``outputs`` and ``node(name).spec``);
    :func:`resolve_task` decides what a sigmoid or raw output is from its width and the labels.
    """
    spec = graph.node(graph.outputs[0]).spec
    return kind_of_layer(spec.class_name, spec.config)


def layer_kind(model) -> OutputKind:
    """:func:`kind_of_layer` of a tf_keras model's last layer (through a wrapper such as TF-MOT's), no graph read."""
    last = model.layers[-1]
    last = getattr(last, "layer", last)  # a Wrapper's wrapped layer
    config = last.get_config()
    wrapped = getattr(getattr(last, "activation", None), "activation", None)  # TF-MOT QAT's QuantizeAwareActivation
    if hasattr(wrapped, "__name__"):  # its layer's config names the wrapper, not the softmax inside it
        config = {**config, "activation": wrapped.__name__}
    return kind_of_layer(type(last).__name__, config)


def resolve_task(
    kind: OutputKind, outputs: int, *, task: Task | None = None, labels_are_classes: bool | None = None
) -> tuple[Task, OutputKind]:
    """The model's task and output kind, from what the user set, else the labels, else the output width.

    ``outputs`` is the output's last-axis width; ``labels_are_classes`` says whether the data's labels are
    class ids (None: no data). A softmax output is a classifier; a regression task on it is a UsageError.
    Raw values with class labels (or ``task=CLASSIFICATION``) are logits; with continuous labels (or
    ``task=REGRESSION``) predictions; one linear unit with class labels is a binary classifier's logit
    (BINARY_LOGITS). Without either, a width of 2 or more is taken for logits and a width of 1 for one
    regression target, said in one log line. One sigmoid unit is a binary classifier (SIGMOID) unless
    regression is set or read off the labels; several sigmoid units are a multi-label head, read as regression
    values (a UsageError with class labels).
    """
    if kind in CLASSIFIER_HEADS:
        if task is Task.REGRESSION:
            raise UsageError("--task regression: the model ends in a softmax, which makes it a classifier")
        return Task.CLASSIFICATION, kind
    if kind is OutputKind.SIGMOID:
        return _sigmoid_task(outputs, task, labels_are_classes)
    if task is None and labels_are_classes is not None:
        task = Task.CLASSIFICATION if labels_are_classes else Task.REGRESSION
    if task is None:
        task = Task.CLASSIFICATION if outputs >= 2 else Task.REGRESSION
        log.info(
            "the model's output has no softmax; taken for %s (%d output%s): set --task to change it",
            "logits" if task is Task.CLASSIFICATION else "a regression",
            outputs,
            "s" * (outputs != 1),
        )
    if task is Task.CLASSIFICATION and outputs < 2:
        return task, OutputKind.BINARY_LOGITS  # one linear unit with class labels: a binary classifier's logit
    return task, OutputKind.LOGITS if task is Task.CLASSIFICATION else OutputKind.VALUES


def _sigmoid_task(outputs: int, task: Task | None, labels_are_classes: bool | None) -> tuple[Task, OutputKind]:
    """One sigmoid unit is a binary classifier unless the user or the labels say regression. Several are a
    multi-label head: K independent probabilities, read as K regression values (their labels a 0/1 matrix), and a
    UsageError with class ids, which K independent units do not predict."""
    if task is None and labels_are_classes is not None:
        task = Task.CLASSIFICATION if labels_are_classes else Task.REGRESSION
    if task is Task.REGRESSION:
        return task, OutputKind.VALUES
    if outputs != 1:
        if task is Task.CLASSIFICATION:
            raise UsageError(MULTI_LABEL_CLASSES.format(units=outputs))
        log.info(
            "the model ends in %d sigmoid units: a multi-label head, read as %d per-label probabilities "
            "(regression values); set --task to change it",
            outputs,
            outputs,
        )  # no labels here: what they are held to is said when data meets the model (deploykit.io.inputs)
        return Task.REGRESSION, OutputKind.VALUES
    if task is None:
        log.info(
            "the model ends in one sigmoid unit: taken for a binary classifier (P(class 1)); "
            "set --task regression to change it"
        )
    return Task.CLASSIFICATION, OutputKind.SIGMOID


#: Rows of probabilities sum to 1 within this (float32 softmax outputs, a float16 file's included).
PROBABILITY_SUM_TOLERANCE = 1e-3


def kind_of_outputs(out, classes: int) -> OutputKind:
    """What a classifier's raw outputs hold, read off their values on some rows (a converter's ONNX file does not
    say): one column in [0, 1] is a sigmoid's P(class 1), any other one column a binary logit; ``classes`` columns
    of non-negative rows summing to 1 are probabilities, else logits. Other widths: PROBABILITIES (the output
    contract check then names the mismatch)."""
    import numpy as np

    out = np.asarray(out, np.float64)
    out = out.reshape(len(out), -1)
    if out.shape[1] == 1 and classes == 2:
        return OutputKind.SIGMOID if ((out >= 0) & (out <= 1)).all() else OutputKind.BINARY_LOGITS
    if out.shape[1] == classes > 1 and not (
        (out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE)
    ):
        return OutputKind.LOGITS
    return OutputKind.PROBABILITIES


def model_task(model, task: Task | None = None, labels_are_classes: bool | None = None) -> tuple[Task, OutputKind]:
    """:func:`resolve_task` of a tf_keras model: its last layer read through the graph, its output width.

    Imports the graph reader (and so TensorFlow) only when called.
    """
    from deploykit.core.graph import graph_from_model
    from deploykit.core.multi_io import PACKED_OUTPUT

    width = model.output_shape[-1]
    graph = graph_from_model(model, unsafe=True)
    if graph.outputs == [PACKED_OUTPUT]:  # several outputs side by side, or an image out: regression values
        if task is Task.CLASSIFICATION:
            raise UsageError(
                "the model has several outputs or one that is not a vector per row, shipped as regression values: "
                "--task classification does not apply"
            )
        task = Task.REGRESSION
    return resolve_task(output_kind(graph), int(width or 0), task=task, labels_are_classes=labels_are_classes)
