"""Exact removal of hidden Dense neurons that cannot affect the output.

A hidden neuron goes when

(a) all its incoming weights are zero: it outputs the constant ``act(bias)``
    (``act(0)`` is 0 for relu, elu, selu, tanh; 0.5 for sigmoid: evaluated,
    not assumed). The constant is carried through the layers up to the next
    Dense (BatchNormalization at inference, element-wise activations), then
    folded into that layer's bias through the neuron's outgoing weights; or
(b) all its outgoing weights (the next Dense kernel's row) are zero.

Between two Dense layers may sit BatchNormalization (axis -1), Dropout,
AlphaDropout and element-wise activation layers; anything else (Softmax,
Flatten, Reshape, Normalization...) is a barrier and the pair is left alone.

Dropout and MC Dropout: (b) is always exact, dropped or not. For (a), a plain
``Dropout`` maps 0 to 0 whatever its mask, so a constant neuron is removed
only when its value entering the Dropout is exactly 0; a non-zero constant
would be scaled by a random mask under MC Dropout, so it is kept. An
``AlphaDropout`` sends dropped units to ``a * alpha' + b``, not to the
constant, so no (a) removal crosses it. MC sampling keeps the same
distribution (not the same random draws: masks have the new shapes).

The removals repeat until nothing changes (a removal can leave a neuron of
the next layer with no live inputs or outputs). Each layer keeps at least one
neuron. BatchNormalization can stay in place or be folded first; folding
first lets more constants reach a Dropout as exact zeros.
"""

from __future__ import annotations

import numpy as np

from deploykit.errors import DataError, StepError, UsageError
from deploykit.evaluate import output_scale, outputs
from deploykit.layers import Role
from deploykit.sparsity.report import CompactReport, LayerCompact

#: Activations that mix features: a neuron of such a layer is never removed.
_MIXING = frozenset({"softmax", "log_softmax"})
#: Dropout layers whose output is 0 wherever the input is 0 (in training mode too).
_ZERO_PRESERVING = frozenset({"Dropout"})
_FEATURE_AXES = (-1, 1, [-1], [1])


def compact(model, data=None, *, tolerance: float = 1e-5):
    """Remove dead hidden neurons from a copy of ``model``; returns ``(model, CompactReport)``.

    ``data`` (a Dataset: its test split, or an input array) is optional: when
    given, the outputs of both models are compared on it and a difference
    above ``tolerance`` raises StepError.
    """
    from deploykit.backend import is_tf_keras_model
    from deploykit.chain import from_chain, to_chain

    if not is_tf_keras_model(model):
        raise UsageError(f"compact: expects a tf_keras model (load files with deploykit.load_model), got {type(model).__name__}")
    x_check = _check_inputs(model, data)
    chain = to_chain(model)
    flat = [len(l.output_shape) == 2 for l in model.layers if type(l).__name__ != "InputLayer"]
    dense = [i for i, spec in enumerate(chain.layers) if spec.support.role is Role.DENSE]
    if not dense:
        raise StepError(f"compact: model {model.name!r} has no Dense layer")
    before = [_units_macs(chain.layers[i]) for i in dense]
    passes, kept = 0, {}
    while True:
        passes += 1
        removed = 0
        for i, j in zip(dense, dense[1:]):
            n, kept[i] = _compact_pair(chain.layers, i, j, flat[i])
            removed += n
        if not removed:
            break
    result = from_chain(chain)
    after = [_units_macs(chain.layers[i]) for i in dense]
    layers = [
        LayerCompact(chain.layers[i].name, b[0], a[0], b[1], a[1], kept.get(i, 0))
        for i, b, a in zip(dense, before, after)
    ]
    report = CompactReport(layers, sum(b[1] for b in before), sum(a[1] for a in after), passes)
    if x_check is not None:
        reference = outputs(model, x_check)
        diff = np.abs(outputs(result, x_check).astype(np.float64) - reference)
        report.max_abs_diff = float(diff.max()) if diff.size else 0.0
        bound = tolerance * output_scale(reference)  # a regressor's outputs round relative to their size
        if report.max_abs_diff > bound:
            raise StepError(f"compact: outputs changed by {report.max_abs_diff:.3g} (> {bound:g}) on the check data")
    return result, report


def apply_compact(model, layers, enabled: bool, data=None):
    """Run compact when ``enabled``; record each layer's removed neurons in ``layers`` (LayerSparsity)."""
    if not enabled:
        return model, None
    result, report = compact(model, data)
    removed = {l.name: l.neurons_before - l.neurons_after for l in report.layers}
    for layer in layers:
        layer.neurons_removed = removed.get(layer.name, 0)
    return result, report


def _check_inputs(model, data):
    if data is None:
        return None
    if hasattr(data, "x_test"):
        data.check_input_shape(model.input_shape, what=f"model {model.name!r}")
        return data.x_test
    x = np.asarray(data, dtype=np.float32)
    if x.shape[1:] != tuple(model.input_shape[1:]):
        raise DataError(f"compact: check data has inputs of shape {x.shape[1:]}, but model {model.name!r} expects {tuple(model.input_shape[1:])}")
    return x


def _units_macs(spec) -> tuple[int, int]:
    kernel = spec.weights[0]
    return int(kernel.shape[1]), int(kernel.size)


def _activation(config) -> str:
    act = config.get("activation")
    if isinstance(act, dict):
        act = act.get("config", {}).get("name") or act.get("class_name")
    return str(act or "linear").lower()


def _passable(src, between) -> bool:
    """True when every layer between two Dense layers acts feature by feature."""
    if _activation(src.config) in _MIXING:
        return False
    for spec in between:
        role = spec.support.role
        if role is Role.DROPOUT:
            continue
        if role is Role.BATCHNORM and spec.config.get("axis", -1) in _FEATURE_AXES:
            continue
        if role is Role.ACTIVATION and spec.class_name != "Softmax" and _activation(spec.config) not in _MIXING:
            continue
        return False
    return True


def _compact_pair(specs, i: int, j: int, flat: bool) -> tuple[int, int]:
    """Remove the dead neurons of Dense ``specs[i]`` feeding Dense ``specs[j]``; (removed, constants kept)."""
    src, dst, between = specs[i], specs[j], specs[i + 1 : j]
    kernel = src.weights[0]
    n = kernel.shape[1]
    bias = src.weights[1] if len(src.weights) > 1 else np.zeros(n, np.float32)
    dead_in = ~kernel.any(axis=0)
    if not (flat and _passable(src, between)):
        return 0, int(dead_in.sum())
    dead_out = ~dst.weights[0].any(axis=1)
    value, exact = _constant_at_next(src, between, bias)
    fold = dead_in & exact & ~dead_out & np.isfinite(value)
    remove = dead_out | fold
    if remove.all():
        remove[0] = fold[0] = False
    kept = int((dead_in & ~remove).sum())
    if not remove.any():
        return 0, kept
    keep = ~remove
    dst_kernel = dst.weights[0]
    dst_bias = dst.weights[1] if len(dst.weights) > 1 else np.zeros(dst_kernel.shape[1], np.float32)
    shift = value[fold].astype(np.float64) @ dst_kernel[fold].astype(np.float64)
    if shift.any():
        dst.config["use_bias"] = True
        dst_bias = (dst_bias.astype(np.float64) + shift).astype(dst_bias.dtype)
    dst.weights = [dst_kernel[keep]] + ([dst_bias] if dst.config.get("use_bias", True) else [])
    src.weights = [kernel[:, keep]] + ([bias[keep]] if len(src.weights) > 1 else [])
    src.config["units"] = int(keep.sum())
    for spec in between:
        spec.weights = [w[..., keep] if w.ndim and w.shape[-1] == n else w for w in spec.weights]
    return int(remove.sum()), kept


def _constant_at_next(src, between, bias):
    """The value a constant neuron hands to the next Dense, and where removing it keeps MC Dropout exact."""
    from deploykit.backend import keras, tf

    n = bias.shape[0]
    h = keras.activations.get(src.config.get("activation"))(tf.constant(bias[None], tf.float32))
    exact = np.ones(n, dtype=bool)
    for spec in between:
        if spec.support.role is Role.DROPOUT:
            exact &= (h.numpy()[0] == 0) if spec.class_name in _ZERO_PRESERVING else False
            continue
        config = {k: v for k, v in spec.config.items() if k not in ("batch_input_shape", "input_shape")}
        layer = keras.layers.deserialize({"class_name": spec.class_name, "config": config})
        layer.build((None, n))
        if spec.weights:
            layer.set_weights(spec.weights)
        h = layer(h, training=False)
    return np.asarray(h.numpy()[0], dtype=np.float32), exact
