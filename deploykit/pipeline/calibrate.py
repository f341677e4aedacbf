"""The pipeline's ``temperature`` step: one calibration, folded into the model, so every artifact carries it.

The temperature is fitted on the validation split and kept only when it generalises
(:mod:`deploykit.uncertainty.generalises`); a kept T is folded into the model itself, before it is saved
and exported: the head's last affine layer (the Dense or convolution before the softmax, or the logits
layer) has its kernel and bias divided by T. ``softmax(W x / T + b / T)`` is ``softmax((W x + b) / T)``
exactly, so ``model.keras``, every ONNX file and every TFLite file give the same calibrated probabilities
(a logits model's logits become ``z / T``). The MC Dropout model and the ensemble fit their own temperature
on top, at their own placement.
"""

from __future__ import annotations

import numpy as np

from deploykit.core.task import Task, is_softmax_spec
from deploykit.errors import DataError, StepError, UnsupportedLayerError
from deploykit.pipeline.records import Status, StepOutput, StepRecord

#: Head activations a temperature divides the input of: softmax, a binary sigmoid, or none (logits).
_TEMPERABLE = ("softmax", "sigmoid", "linear")
#: Layers with an affine kernel and bias whose outputs scale with them.
_AFFINE = ("Dense", "Conv1D", "Conv2D", "Conv3D", "EinsumDense")
#: |folded - softmax(log p / T)| allowed on the check batch (float32 rounding).
FOLD_TOLERANCE = 1e-5


def temperature_step(model, ctx) -> StepOutput:
    """Fit T on the validation outputs, keep it only when it generalises, fold it into the model."""
    from deploykit.core.evaluate import main_outputs, outputs
    from deploykit.pipeline.context import switched_off
    from deploykit.uncertainty.generalises import check_temperature

    if not ctx.config.export.temperature:
        return switched_off(model, "temperature")
    if ctx.task is Task.REGRESSION:
        return StepOutput(
            model,
            StepRecord(
                "temperature",
                Status.SKIPPED,
                "a regressor has no softmax to temper (its MC model's std scale is checked the same way)",
            ),
        )
    if len(ctx.data.x_val) == 0:
        return StepOutput(model, StepRecord("temperature", Status.SKIPPED, "no validation split to fit it on"))
    probs = np.asarray(main_outputs(outputs(model, ctx.data.x_val), ctx.kind), np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:  # a binary sigmoid head: p(1) as [p(0), p(1)] (sigmoid(z / T) alike)
        probs = np.concatenate([1 - probs, probs], axis=1)
    try:
        decision = check_temperature(
            np.asarray(ctx.data.y_val).reshape(len(probs), -1).argmax(1)
            if np.ndim(ctx.data.y_val) == 2
            else ctx.data.y_val,
            probs,
        )
    except DataError as exc:  # outputs or labels a temperature does not apply to: the model goes on as it is
        return StepOutput(model, StepRecord("temperature", Status.SKIPPED, f"no temperature: {exc}"))
    ctx.say("  " + decision.line())
    if not decision.kept:
        return StepOutput(model, StepRecord("temperature", Status.DONE, decision.line(), detail=decision))
    folded = fold_temperature(model, decision.value)
    before, after = (_nll(m, ctx) for m in (model, folded))  # measured on test, after the decision
    reason = f"{decision.line()}; folded into the head (test NLL {before:.4f} -> {after:.4f})"
    return StepOutput(
        folded,
        StepRecord("temperature", Status.DONE, reason, detail=decision),
        applied=(f"temperature({float(decision.value)!r})",),  # every digit: the outputs are reproduced from it
    )


def fold_temperature(model, temperature: float):
    """A copy of ``model`` whose outputs are its probabilities at ``temperature`` (logits divided by T), exactly.

    Raises UnsupportedLayerError when the head has no affine layer to divide (the step is then skipped).
    """
    from deploykit.core.evaluate import outputs
    from deploykit.core.graph import copy_model, graph_from_model, random_inputs
    from deploykit.uncertainty.temperature import scale_probs

    copy = copy_model(model, unsafe=True)
    layer = head_layer(copy)
    weights = layer.get_weights()
    if type(layer).__name__ == "BatchNormalization":
        scaled = _scaled_batchnorm(layer, weights, temperature)
    else:
        scaled = [w / np.float32(temperature) for w in weights]
    layer.set_weights(scaled)
    graph = graph_from_model(model, unsafe=True)  # token ids where an Embedding reads them, not floats
    probe = np.concatenate([np.zeros((1, *graph.input_shape), np.float32), random_inputs(graph, 7)])
    raw, new = outputs(model, probe), outputs(copy, probe)
    last = copy.layers[-1]
    activation = str(last.get_config().get("activation", "linear"))
    expected = (
        raw / temperature
        if activation == "linear" and not is_softmax_spec(type(last).__name__, last.get_config())
        else scale_probs(raw, temperature)
    )
    if activation == "sigmoid":
        expected = 1 / (1 + np.exp(-np.log(raw / (1 - raw)) / temperature))
    if np.abs(np.asarray(new, np.float64) - expected).max() > FOLD_TOLERANCE * max(1.0, float(np.abs(expected).max())):
        raise StepError(
            f"folding T = {temperature:.4g} into {layer.name} changed the outputs beyond scaling by it",
            step="temperature",
        )
    return copy


def head_layer(model):
    """The affine layer whose output the head's softmax (or sigmoid, or nothing: logits) takes."""
    last = model.layers[-1]
    config = last.get_config()
    activation = str(config.get("activation", "")).lower()
    if is_softmax_spec(type(last).__name__, config) or activation in _TEMPERABLE:
        if type(last).__name__ in _AFFINE:
            return last
        previous = _inbound(last)
        if previous is not None and (
            type(previous).__name__ in _AFFINE
            and str(previous.get_config().get("activation", "linear")) == "linear"
            or type(previous).__name__ == "BatchNormalization"
        ):
            return previous
    raise UnsupportedLayerError(
        last.name,
        type(last).__name__,
        "the temperature is folded into the head's last "
        "Dense or convolution, and this output layer is not one, nor fed by one",
    )


def _inbound(layer):
    """The one layer feeding ``layer`` (None when it has several inputs)."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1:
        return None
    inbound = nodes[0].inbound_layers
    inbound = inbound if isinstance(inbound, (list, tuple)) else [inbound]
    return inbound[0] if len(inbound) == 1 else None


def _scaled_batchnorm(layer, weights, temperature: float):
    """gamma / T and beta / T: a BatchNormalization's output divided by T (needs both scale and center)."""
    config = layer.get_config()
    if not (config.get("scale", True) and config.get("center", True)):
        raise UnsupportedLayerError(
            layer.name, "BatchNormalization", "without scale or center it cannot take the temperature"
        )
    gamma, beta, *rest = weights
    return [gamma / np.float32(temperature), beta / np.float32(temperature), *rest]


def _nll(model, ctx) -> float:
    from deploykit.core.evaluate import main_outputs, outputs
    from deploykit.uncertainty.temperature import _nll

    probs = main_outputs(outputs(model, ctx.data.x_test), ctx.kind).astype(np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = np.concatenate([1 - probs, probs], axis=1)
    y = np.asarray(ctx.data.y_test)
    return _nll(y.argmax(1) if y.ndim == 2 else y.astype(np.int64), probs)
