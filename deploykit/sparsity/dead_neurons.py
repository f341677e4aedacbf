"""Exact removal of hidden Dense neurons and conv channels that cannot affect the output.

A hidden neuron (a Dense unit, or an output channel of a Conv1D / Conv2D) goes when

(a) all its incoming weights are zero: it outputs the constant ``act(bias)``
    (``act(0)`` is 0 for relu, elu, selu, tanh; 0.5 for sigmoid: evaluated,
    not assumed). The constant is carried through the layers up to the next
    kernel (BatchNormalization at inference, element-wise activations; pooling
    and Flatten keep a constant channel constant), then folded into that
    layer's bias through the neuron's outgoing weights; or
(b) all its outgoing weights (the next kernel's rows for that channel) are zero.

The next kernel is a Dense layer (directly, or after Flatten or global pooling:
a channel is then every ``Flatten`` row ``p * channels + c``) or a Conv1D /
Conv2D (its input channel). Between the two may sit BatchNormalization (channel
axis), Dropout, SpatialDropout, AlphaDropout, element-wise activation layers,
pooling, ZeroPadding, Flatten and a DepthwiseConv2D of depth multiplier 1 (each
channel filtered alone: MobileNetV2's expansion conv -> depthwise -> projection
conv; a removed channel takes its depthwise filter with it); anything else
(Softmax, Reshape, LayerNormalization...) is a barrier and the layer is left
alone. A non-zero constant crosses a ZeroPadding, or reaches a conv that pads
(``same``, ``causal``), only where it is exactly 0: the padded borders would
not see it. Where channels are coupled (the output reaches an Add,
Concatenate or Multiply, or a fork: several consumers), the layer is skipped
and :attr:`CompactReport.skipped` says why.

Dropout and MC Dropout: (b) is always exact, dropped or not. For (a), a plain
``Dropout`` (or SpatialDropout) maps 0 to 0 whatever its mask, so a constant
neuron is removed only when its value entering the Dropout is exactly 0; a
non-zero constant would be scaled by a random mask under MC Dropout, so it is
kept. An ``AlphaDropout`` sends dropped units to ``a * alpha' + b``, not to
the constant, so no (a) removal crosses it. MC sampling keeps the same
distribution (not the same random draws: masks have the new shapes).

The removals repeat until nothing changes (a removal can leave a neuron of
the next layer with no live inputs or outputs). Each layer keeps at least one
neuron. BatchNormalization can stay in place or be folded first; folding
first lets more constants reach a Dropout as exact zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploykit.core.evaluate import output_scale, outputs
from deploykit.core.layers import KernelLayout, Role
from deploykit.errors import DataError, StepError, UsageError
from deploykit.io.keras3_api import keras3_boundary
from deploykit.sparsity.report import CompactReport, LayerCompact

#: Activations that mix features: a neuron of such a layer is never removed.
_MIXING = frozenset({"softmax", "log_softmax"})
#: Dropout layers whose output is 0 wherever the input is 0 (in training mode too).
_ZERO_PRESERVING = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D"})


@dataclass
class _Route:
    """From a kernel layer to the next one: the layers between, the next kernel, its rows per channel."""

    between: list  # LayerSpec
    dst: object  # LayerSpec
    positions: int = 1  # Flatten: each channel feeds this many rows of a Dense kernel


@keras3_boundary
def compact(model, data=None, *, tolerance: float = 1e-5):
    """Remove dead hidden neurons and conv channels from a copy of ``model``; returns ``(model, CompactReport)``.

    ``data`` (a Dataset: its test split, or an input array) is optional: when
    given, the outputs of both models are compared on it and a difference
    above ``tolerance`` raises StepError, unless their float64 twins agree within it (the difference is then
    the model's own float32 rounding: :mod:`deploykit.core.float64`).
    """
    from deploykit.backend import is_tf_keras_model
    from deploykit.core.graph import graph_from_model, to_keras

    if not is_tf_keras_model(model):
        raise UsageError(
            f"compact: expects a tf_keras model (load files with deploykit.load_model), got {type(model).__name__}"
        )
    x_check = _check_inputs(model, data)
    graph = graph_from_model(model, unsafe=True)  # a live model: its code loaded already; reading it runs none
    sources = [node for node in graph.nodes if node.spec.support.compactable]  # the layer table: Dense, Conv1D/2D
    if not sources:
        raise StepError(f"compact: model {model.name!r} has no Dense layer or convolution")
    before = {node.name: _units_macs(node) for node in sources}
    passes, kept, skipped = 0, {}, {}
    while True:
        passes += 1
        removed = 0
        for node in sources:
            route = _route(graph, node)
            if isinstance(route, str):
                kept[node.name] = int((~_columns(node.spec).any(axis=0)).sum()) if route else 0
                if route:
                    skipped[node.name] = route
                continue
            n, kept[node.name] = _compact_pair(node.spec, route)
            removed += n
        if not removed:
            break
    result = to_keras(graph)
    after = {node.name: _units_macs(node) for node in sources}
    layers = [
        LayerCompact(name, b[0], after[name][0], b[1], after[name][1], kept.get(name, 0)) for name, b in before.items()
    ]
    report = CompactReport(
        layers, sum(b[1] for b in before.values()), sum(a[1] for a in after.values()), passes, skipped=skipped
    )
    if x_check is not None:
        reference = outputs(model, x_check)
        diff = np.abs(outputs(result, x_check).astype(np.float64) - reference)
        report.max_abs_diff = float(diff.max()) if diff.size else 0.0
        bound = tolerance * output_scale(reference)  # a regressor's outputs round relative to their size
        if report.max_abs_diff > bound:
            _confirm_in_float64(model, result, x_check, bound, report.max_abs_diff)
    return result, report


def _confirm_in_float64(model, result, x_check, bound: float, float32_diff: float) -> None:
    """Raise StepError unless the two models agree within ``bound`` in float64: a float32 difference beyond it is
    then the model's own rounding (an ill-conditioned network, :mod:`deploykit.core.float64`), not the removal."""
    from deploykit.core.float64 import float64_outputs

    what = f"compact: outputs changed by {float32_diff:.3g} (> {bound:g}) on the check data"
    try:
        diff = float(np.max(np.abs(float64_outputs(result, x_check) - float64_outputs(model, x_check)), initial=0.0))
    except Exception as exc:  # a layer that cannot compute in float64: no evidence beyond the float32 figure
        raise StepError(f"{what} (no float64 check: {type(exc).__name__})") from exc
    if diff > bound:
        raise StepError(f"{what}, and by {diff:.3g} in float64")


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
        raise DataError(
            f"compact: check data has inputs of shape {x.shape[1:]}, "
            f"but model {model.name!r} expects {tuple(model.input_shape[1:])}"
        )
    return x


def _units_macs(node) -> tuple[int, int]:
    """(output units, multiply-adds per example): kernel size times output positions for a conv."""
    kernel = node.spec.weights[0]
    return int(kernel.shape[-1]), int(kernel.size) * int(np.prod(node.shape[:-1], dtype=np.int64))


def _columns(spec) -> np.ndarray:
    """A kernel as (inputs, output units): one column per Dense unit or conv output channel."""
    return spec.weights[0].reshape(-1, spec.weights[0].shape[-1])


def _activation(config) -> str:
    act = config.get("activation")
    if isinstance(act, dict):  # a serialized activation object, or a function of the user's named in "config"
        inner = act.get("config")
        act = (inner.get("name") if isinstance(inner, dict) else inner) or act.get("class_name")
    return str(act or "linear").lower()


def _route(graph, node):
    """The :class:`_Route` from ``node`` to the next kernel, or why there is none (``""``: no kernel follows).

    Only a single consumer at each step keeps the channels free: a fork or a merge couples them.
    """
    src = node.spec
    current, between, positions = node, [], 1
    while True:
        consumers = graph.consumers(current.name)
        if not consumers or not _feeds_a_kernel(graph, current.name):
            return ""  # reaches the model output: no next kernel to remove rows from
        if graph.fan_out(current.name) > 1:
            return f"channels coupled: {current.name!r} feeds {graph.fan_out(current.name)} places (a fork)"
        nxt = consumers[0]
        spec = nxt.spec
        if spec.support.role is Role.MERGE:
            return f"channels coupled: reaches {spec.class_name} {spec.name!r}"
        if spec.support.compactable:  # the next kernel: a Dense or conv whose rows take the channels
            if _activation(src.config) in _MIXING:
                return f"its {_activation(src.config)} activation mixes its units"
            for layer in (src, spec):
                if not _channels_last(layer) or layer.config.get("groups", 1) != 1:
                    return f"{layer.class_name} {layer.name!r} groups its channels or puts them first"
            return _Route(between, spec, positions)
        if not _passable(spec, graph.shape(current.name), positions):
            return f"compact does not carry channels through the next layer, {spec.name!r} ({spec.class_name})"
        if spec.class_name == "Flatten":
            positions *= int(np.prod(graph.shape(current.name)[:-1], dtype=np.int64))
        between.append(spec)
        current = nxt


def _feeds_a_kernel(graph, name: str) -> bool:
    """True when a Dense or conv layer reads ``name``'s output, directly or further down (one walk downstream:
    asking every node for its ancestors made compact take half a minute on MobileNetV2)."""
    seen, todo = set(), [name]
    while todo:
        for node in graph.consumers(todo.pop()):
            if node.spec.support.compactable:
                return True
            if node.name not in seen:
                seen.add(node.name)
                todo.append(node.name)
    return False


def _channels_last(spec) -> bool:
    return spec.config.get("data_format", "channels_last") in (None, "channels_last")


def _passable(spec, in_shape: tuple, positions: int) -> bool:
    """True when ``spec`` acts on each channel alone (after a Flatten: element-wise, without weights)."""
    role = spec.support.role
    if positions > 1:
        return role in (Role.DROPOUT, Role.ACTIVATION) and not spec.weights and _elementwise(spec)
    if role is Role.DROPOUT or role is Role.PADDING:
        return True
    if role is Role.BATCHNORM:
        axis = spec.config.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        return axis in (-1, len(in_shape))
    if role is Role.ACTIVATION:
        return _elementwise(spec)
    if _depthwise(spec):
        return _channels_last(spec) and spec.config.get("depth_multiplier", 1) == 1
    if role is Role.POOLING or spec.class_name == "Flatten":
        return _channels_last(spec)
    return False


def _depthwise(spec) -> bool:
    """A depthwise conv (the layer table's DEPTHWISE kernel: [taps..., channels, multiplier]), read per channel."""
    kernel = spec.support.kernel
    return kernel is not None and kernel.layout is KernelLayout.DEPTHWISE and kernel.reads_input


def _keep_channels(spec, weight: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
    """A between layer's weight without the removed channels: a depthwise kernel's channel axis is its second to
    last; a per-channel vector (BatchNorm, bias, PReLU alpha) its last."""
    if _depthwise(spec) and weight.ndim > 2:
        return weight[..., keep, :]
    return weight[..., keep] if weight.ndim and weight.shape[-1] == n else weight


def _elementwise(spec) -> bool:
    return spec.class_name != "Softmax" and _activation(spec.config) not in _MIXING


def _compact_pair(src, route: _Route) -> tuple[int, int]:
    """Remove the dead units of ``src`` feeding ``route.dst``; (removed, constants kept)."""
    dst, between = route.dst, route.between
    kernel = _columns(src)
    n = kernel.shape[1]
    bias = src.weights[1] if len(src.weights) > 1 else np.zeros(n, np.float32)
    dead_in = ~kernel.any(axis=0)
    rows = _rows(dst, n, route.positions)  # (positions, n, dst units)
    dead_out = ~rows.any(axis=(0, 2))
    value, exact = _constant_at_next(src, between, bias)
    if dst.config.get("padding", "valid") != "valid":  # padded borders do not see a constant
        exact &= value == 0
    fold = dead_in & exact & ~dead_out & np.isfinite(value)
    remove = dead_out | fold
    if remove.all():
        remove[0] = fold[0] = False
    kept = int((dead_in & ~remove).sum())
    if not remove.any():
        return 0, kept
    keep = ~remove
    dst_bias = dst.weights[1] if len(dst.weights) > 1 else np.zeros(rows.shape[2], np.float32)
    shift = value[fold].astype(np.float64) @ rows[:, fold].sum(axis=0).astype(np.float64)
    if shift.any():
        dst.config["use_bias"] = True
        dst_bias = (dst_bias.astype(np.float64) + shift).astype(dst_bias.dtype)
    dst.weights = [_keep_rows(dst, rows, keep)] + ([dst_bias] if dst.config.get("use_bias", True) else [])
    src.weights = [src.weights[0][..., keep]] + ([bias[keep]] if len(src.weights) > 1 else [])
    src.config[src.support.kernel.units_key] = int(keep.sum())
    for spec in between:
        spec.weights = [_keep_channels(spec, w, keep, n) for w in spec.weights]
    return int(remove.sum()), kept


def _rows(dst, n: int, positions: int) -> np.ndarray:
    """The next kernel's weights per input channel, as (positions or taps, n, units)."""
    kernel = dst.weights[0]
    if _dense(dst):
        return kernel.reshape(positions, n, kernel.shape[-1])
    return kernel.reshape(-1, n, kernel.shape[-1])


def _dense(spec) -> bool:
    """A Dense kernel [inputs, units] (else a conv's [taps..., input channels, filters]), as the layer table says."""
    return spec.support.kernel.layout is KernelLayout.DENSE


def _keep_rows(dst, rows: np.ndarray, keep: np.ndarray) -> np.ndarray:
    kept = rows[:, keep]
    if _dense(dst):
        return kept.reshape(-1, rows.shape[2])
    return kept.reshape(*dst.weights[0].shape[:-2], int(keep.sum()), rows.shape[2])


def _constant_at_next(src, between, bias):
    """The value a constant unit hands to the next kernel, and where removing it stays exact (MC Dropout included).

    Pooling and Flatten keep a constant channel constant; a ZeroPadding keeps only an exact 0.
    """
    from deploykit.backend import keras, tf

    n = bias.shape[0]
    h = keras.activations.get(src.config.get("activation"))(tf.constant(bias[None], tf.float32))
    exact = np.ones(n, dtype=bool)
    for spec in between:
        role = spec.support.role
        if role is Role.DROPOUT:
            exact &= (h.numpy()[0] == 0) if spec.class_name in _ZERO_PRESERVING else False
            continue
        if role is Role.PADDING:
            exact &= h.numpy()[0] == 0
            continue
        if role is Role.POOLING or spec.class_name == "Flatten":
            continue
        if _depthwise(spec):  # a constant channel filtered at the borders is not constant: never folded through
            exact &= False
            continue
        if any(w.ndim > 1 and np.prod(w.shape[:-1]) > 1 for w in spec.weights):  # e.g. PReLU alpha per position
            exact &= False
            continue
        config = {k: v for k, v in spec.config.items() if k not in ("batch_input_shape", "input_shape")}
        if role is Role.BATCHNORM:
            config["axis"] = -1
        config.pop("shared_axes", None)  # PReLU: one alpha per channel here (per-position ones were refused above)
        layer = keras.layers.deserialize({"class_name": spec.class_name, "config": config})
        layer.build((None, n))
        if spec.weights:
            layer.set_weights([w.reshape(-1) if w.ndim > 1 else w for w in spec.weights])
        h = layer(h, training=False)
    return np.asarray(h.numpy()[0], dtype=np.float32), exact
