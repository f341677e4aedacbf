"""The MC Dropout graph's ONNX form of recurrent layers: LSTM, GRU, SimpleRNN and Bidirectional.

ONNX has the three recurrences as ops (``LSTM``, ``GRU``, ``RNN``) with a
sequence-first layout; Keras keeps its gates in another order (LSTM: i f c o,
ONNX: i o f c; GRU: z r h in both) and its weights transposed. A layer before
the first dropout runs once per call like any other; one after a dropout runs
on the T * N tiled rows. A layer's returned states are the op's final states
(``Y_h``, an LSTM's ``Y_c``), and the states it is started from
(``initial_state=``) its ``initial_h`` / ``initial_c``. What ONNX's ops cannot
say (a mask from ``Embedding(mask_zero=True)``, a reversed output sequence, an
activation outside sigmoid / tanh / relu, a stateful layer) is refused by name,
so the MC step skips with that reason rather than sampling another function.
Registered with :func:`deploykit.uncertainty.mc_layers.emits` when
:mod:`deploykit.uncertainty.mc_graph` is imported.
"""

from __future__ import annotations

import numpy as np

from deploykit.core.graph import LayerSpec
from deploykit.errors import UnsupportedLayerError
from deploykit.uncertainty.mc_layers import emits

#: Keras activation name -> ONNX recurrence activation.
_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
#: The Keras activations of each recurrence, in the order of ONNX's ``activations`` attribute (per direction).
_ACTIVATION_KEYS = {
    "LSTM": ("recurrent_activation", "activation", "activation"),
    "GRU": ("recurrent_activation", "activation"),
    "SimpleRNN": ("activation",),
}
#: ONNX op, gates, and the Keras -> ONNX gate order of the kernel's column blocks.
_OPS = {"LSTM": ("LSTM", 4, (0, 3, 1, 2)), "GRU": ("GRU", 3, (0, 1, 2)), "SimpleRNN": ("RNN", 1, (0,))}
_MERGES = ("concat", "sum", "ave", "mul")


@emits("LSTM", "GRU", "SimpleRNN")
def _emit_recurrent(g, node, xs, shapes):
    """The layer's output, or with ``return_state`` a list of it and its final states (Keras' order: h, then an
    LSTM's c); the inputs after the sequence are its initial states (``initial_state=``)."""
    spec = node.spec
    _check(spec)
    return _recurrence(g, spec, [spec], spec.weights, xs[0], shapes[0], "concat", xs[1:])


@emits("Bidirectional")
def _emit_bidirectional(g, node, xs, shapes):
    spec = node.spec
    merge = spec.config.get("merge_mode", "concat")
    if merge not in _MERGES:
        raise UnsupportedLayerError(
            spec.name, spec.class_name, f"merge_mode {merge!r} has no form in the MC Dropout graph"
        )
    forward = _inner(spec, "layer")
    backward = (
        _inner(spec, "backward_layer")
        if spec.config.get("backward_layer")
        else LayerSpec(
            forward.class_name, {**forward.config, "go_backwards": not forward.config.get("go_backwards", False)}
        )
    )
    if (
        forward.config.get("go_backwards")
        or not backward.config.get("go_backwards")
        or _signature(forward) != _signature(backward)
    ):
        raise UnsupportedLayerError(
            spec.name,
            spec.class_name,
            "its two layers differ; the MC Dropout graph takes a forward and a backward copy of one layer",
        )
    _check(forward)
    return _recurrence(g, spec, [forward, backward], spec.weights, xs[0], shapes[0], merge)  # forward's weights first


def _inner(spec: LayerSpec, key: str) -> LayerSpec:
    inner = spec.config.get(key) or {}
    return LayerSpec(str(inner.get("class_name")), dict(inner.get("config") or {}))


def _signature(spec: LayerSpec) -> tuple:
    c = spec.config
    return (
        spec.class_name,
        c.get("units"),
        c.get("activation"),
        c.get("recurrent_activation"),
        c.get("use_bias", True),
        c.get("reset_after"),
        c.get("return_sequences", False),
    )


def _check(spec: LayerSpec) -> None:
    """Refuse what the ONNX recurrences cannot express, by name."""
    c = spec.config
    if spec.class_name not in _OPS:
        raise UnsupportedLayerError(spec.name, spec.class_name, "no ONNX recurrence for this layer")
    for key in ("stateful", "time_major"):
        if c.get(key):
            raise UnsupportedLayerError(spec.name, spec.class_name, f"{key}=True has no form in the MC Dropout graph")
    if c.get("go_backwards") and c.get("return_sequences"):
        raise UnsupportedLayerError(
            spec.name,
            spec.class_name,
            "go_backwards with return_sequences (a reversed output sequence) has no form in the MC Dropout graph",
        )
    for key in ("activation", "recurrent_activation"):
        if key in c and c[key] not in _ACTIVATIONS:
            raise UnsupportedLayerError(spec.name, spec.class_name, f"{key} {c[key]!r} has no ONNX recurrence form")


def _recurrence(g, spec: LayerSpec, cells: list[LayerSpec], weights: list, x: str, shape: tuple, merge: str, states=()):
    """One ONNX recurrence over ``x`` [N, steps, features]: one direction per cell spec, merged as Keras does.

    ``states``: one direction's initial states [N, units] (h, then an LSTM's c). With the cell's ``return_state``
    the result is a list: the output, then each final state [N, units]."""
    if len(shape) != 2:
        raise UnsupportedLayerError(spec.name, spec.class_name, f"expects [steps, features] per sample, got {shape}")
    steps, _ = shape
    cell = cells[0]
    op, gates, order = _OPS[cell.class_name]
    units = int(cell.config["units"])
    per = len(weights) // len(cells)
    w, r, b = zip(
        *(_onnx_weights(cell, weights[i * per : (i + 1) * per], gates, order, units) for i, cell in enumerate(cells))
    )
    directions = len(cells)
    direction = "bidirectional" if directions == 2 else "reverse" if cell.config.get("go_backwards") else "forward"
    attrs = {
        "hidden_size": units,
        "direction": direction,
        "activations": [_ACTIVATIONS[c.config[k]] for c in cells for k in _ACTIVATION_KEYS[cell.class_name]],
    }
    if cell.class_name == "GRU":
        attrs["linear_before_reset"] = int(bool(cell.config.get("reset_after", True)))
    seq_first = g.op("Transpose", [x], perm=[1, 0, 2])
    initial = ["", *_initial_states(g, states, units)] if states else []  # "": no sequence_lens
    ends = 3 if op == "LSTM" else 2
    y, y_h, *y_c = g.op(
        op, [seq_first, g.const(np.stack(w)), g.const(np.stack(r)), g.const(np.stack(b)), *initial], n_out=ends, **attrs
    )
    sequences = bool(cell.config.get("return_sequences", False))
    if sequences:  # Y [steps, directions, N, units] -> [N, steps, directions, units]
        out = g.op("Transpose", [y], perm=[2, 0, 1, 3])
        lead = [0, steps]
    else:  # Y_h [directions, N, units] -> [N, directions, units]
        out = g.op("Transpose", [y_h], perm=[1, 0, 2])
        lead = [0]
    width = units * directions if merge == "concat" else units
    if merge == "concat":
        out = g.op("Reshape", [out, g.const([*lead, width], np.int64)])
    else:
        axis = len(lead)  # the directions axis
        reduced = {"sum": "ReduceSum", "ave": "ReduceMean", "mul": "ReduceProd"}[merge]
        out = g.reduce(reduced, out, [axis])
    made = (out, ((steps, width) if sequences else (width,)))
    if not cell.config.get("return_state"):
        return made
    return [made, *((state, (units,)) for state in _final_states(g, [y_h, *y_c], directions))]


def _final_states(g, finals: list[str], directions: int) -> list[str]:
    """The recurrence's final states ([directions, N, units] each: h, then an LSTM's c) in the order Keras returns
    them: h (and c) of the forward direction, then of the backward one (a Bidirectional's), each [N, units]."""
    return [g.op("Gather", [state, g.const(d, np.int64)], axis=0) for d in range(directions) for state in finals]


def _initial_states(g, states, units: int) -> list[str]:
    """Initial states [N, units] as the recurrence takes them: [directions = 1, N, units]."""
    per_direction = g.const([1, -1, units], np.int64)
    return [g.op("Reshape", [state, per_direction]) for state in states]


def _onnx_weights(cell: LayerSpec, weights: list, gates: int, order: tuple, units: int):
    """(W [gates*units, in], R [gates*units, units], B [2*gates*units]) in ONNX's gate order."""
    kernel, recurrent, *bias = (np.asarray(v, np.float32) for v in weights)

    def reorder(m: np.ndarray) -> np.ndarray:  # columns in Keras gate blocks -> rows in ONNX gate blocks
        blocks = np.split(m, gates, axis=-1)
        return np.concatenate([blocks[i] for i in order], axis=-1).T

    zeros = np.zeros(gates * units, np.float32)
    if not bias:
        b = np.concatenate([zeros, zeros])
    elif bias[0].ndim == 2:  # GRU reset_after: [input bias, recurrent bias]
        b = np.concatenate([reorder(bias[0][0:1]).ravel(), reorder(bias[0][1:2]).ravel()])
    else:
        b = np.concatenate([reorder(bias[0][None]).ravel(), zeros])
    return reorder(kernel), reorder(recurrent), b
