"""Packing a model with several inputs or outputs into one input and one output, and back
(:mod:`deploykit.core.multi_io`).

:func:`pack_model` rewrites the model's graph: one input ``deploykit_packed_input`` [D] (every input flattened,
side by side in name order), cut back into each model input by a ``Reshape`` [D, 1], a ``Cropping1D`` and a
``Reshape`` to the input's shape named after the input (so the model's own layers read it unchanged); several
outputs are each reshaped flat and concatenated into ``deploykit_packed_output`` [K] (one output that is not a
vector, an image [8, 8, 1], is flattened by one ``Reshape`` of that name). Slicing and concatenation move values
and compute nothing, so the packed model's outputs are the model's, exactly. The original order of
the inputs and outputs is kept in the slicing layers' names (``deploykit_split_3``, ``deploykit_flat_1``), so
:func:`unpack_model` gives back the model as the user built it (``model([wide, deep])`` still works).

The exporters name the artifacts' tensors after the model's: :func:`name_onnx_tensors` edits the converted
graph (Reshape / Concat in front, Slice / Reshape behind), :func:`tflite_function` is the signature the TFLite
converter takes (one named argument per input, one named result per output).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from deploykit.core.graph import Graph, LayerSpec, Node, graph_from_model, to_keras
from deploykit.core.multi_io import (
    FLAT_PREFIX,
    PACKED_INPUT,
    PACKED_OUTPUT,
    SPLIT_PREFIX,
    Layout,
)
from deploykit.core.task import is_softmax_spec
from deploykit.errors import UnsupportedLayerError

log = logging.getLogger(__name__)

_COLUMN = SPLIT_PREFIX + "column"


@dataclass(frozen=True)
class Packing:
    """A packed model's layout (name order) and the model's own order of its inputs and outputs."""

    layout: Layout
    input_order: tuple[str, ...]
    output_order: tuple[str, ...]

    @property
    def packs_inputs(self) -> bool:
        return self.layout.several_inputs

    @property
    def packs_outputs(self) -> bool:
        return self.layout.packs_outputs


def has_several_io(model) -> bool:
    """A tf_keras model with several inputs or several outputs."""
    return len(getattr(model, "inputs", None) or []) > 1 or len(getattr(model, "outputs", None) or []) > 1


def has_shaped_output(model) -> bool:
    """A tf_keras model whose one output is not one vector per row (an autoencoder's image, a per-timestep
    sequence): every step reads [N, K], so it is packed into its K columns as several outputs are."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1 or len(outputs[0].shape) < 3:
        return False
    return all(isinstance(d, int) and d > 0 for d in outputs[0].shape[1:])  # K columns need every axis sized


def needs_packing(model) -> bool:
    """A tf_keras model :func:`pack_model` rewrites: several inputs or outputs, or one output that is not a vector."""
    return has_several_io(model) or has_shaped_output(model)


def pack_model(model):
    """The packed twin of a tf_keras model with several inputs or outputs, or one non-vector output (the model
    itself otherwise).

    Several outputs are shipped as regression heads (their columns side by side); one image or sequence output is
    a regression of its K values (an autoencoder's pixels). An output ending in a softmax that is not the model's
    one classifier head (one among several, or one per pixel or timestep: a segmentation) is packed the same way:
    its class probabilities are values, held to their RMSE against one-hot labels (the root of the Brier score),
    said in one line (:func:`softmax_values`).
    """
    if not needs_packing(model):
        return model
    graph = graph_from_model(model, unsafe=True)
    if len(set(graph.outputs)) != len(graph.outputs) or set(graph.outputs) & set(graph.inputs):
        raise UnsupportedLayerError(
            model.name, type(model).__name__, "returns one tensor twice or an input as an output"
        )
    for line in softmax_values(graph):
        log.info(line)
    return to_keras(pack_graph(graph))


def softmax_values(graph: Graph) -> list[str]:
    """What :func:`pack_model` says of the outputs of ``graph`` that end in a softmax: each is shipped as values."""
    lines = []
    for name in graph.outputs:
        spec = graph.node(name).spec
        if is_softmax_spec(spec.class_name, spec.config):
            where = "per position" if len(graph.outputs) == 1 else f"among {len(graph.outputs)} outputs"
            lines.append(
                f"output {name!r} ends in a softmax {where}: shipped as its class probabilities, values held to "
                "their RMSE against one-hot labels (the root of the Brier score); class ids are read as one-hot"
            )
    return lines


def pack_graph(graph: Graph) -> Graph:
    """The graph with its inputs packed into one (when several) and its outputs into one (when several, or when the
    one output is not a vector)."""
    packed = graph.copy()
    order_in, order_out = list(graph.inputs), list(graph.outputs)
    layout = Layout.of(dict(graph.inputs), {o: graph.shape(o) for o in graph.outputs})
    front: list[Node] = []
    if layout.several_inputs:
        size = layout.input_size
        front.append(
            Node(LayerSpec("Reshape", {"name": _COLUMN, "target_shape": (size, 1)}), [PACKED_INPUT], (size, 1))
        )
        start = 0
        for t in layout.inputs:
            crop = f"{SPLIT_PREFIX}{order_in.index(t.name)}"
            front.append(
                Node(
                    LayerSpec("Cropping1D", {"name": crop, "cropping": (start, size - start - t.size)}),
                    [_COLUMN],
                    (t.size, 1),
                )
            )
            front.append(Node(LayerSpec("Reshape", {"name": t.name, "target_shape": t.shape}), [crop], t.shape))
            start += t.size
        packed.inputs = {PACKED_INPUT: (size,)}
    back: list[Node] = []
    if layout.packs_outputs and not layout.several_outputs:  # one image out: flattened, nothing to join
        t = layout.outputs[0]
        back.append(Node(LayerSpec("Reshape", {"name": PACKED_OUTPUT, "target_shape": (t.size,)}), [t.name], (t.size,)))
        packed.outputs = [PACKED_OUTPUT]
    elif layout.several_outputs:
        for t in layout.outputs:
            flat = f"{FLAT_PREFIX}{order_out.index(t.name)}"
            back.append(Node(LayerSpec("Reshape", {"name": flat, "target_shape": (t.size,)}), [t.name], (t.size,)))
        back.append(
            Node(
                LayerSpec("Concatenate", {"name": PACKED_OUTPUT, "axis": -1}),
                [n.name for n in back],
                (layout.output_size,),
            )
        )
        packed.outputs = [PACKED_OUTPUT]
    packed.nodes = front + packed.nodes + back
    return packed


def packing_of(model) -> Packing | None:
    """The :class:`Packing` of a packed tf_keras model (read off its layer names), else None."""
    names = {layer.name for layer in getattr(model, "layers", [])}
    if PACKED_OUTPUT not in names and _COLUMN not in names:
        return None
    return graph_packing(graph_from_model(model, unsafe=True))


def layout_of(model) -> Layout | None:
    """The :class:`Layout` of a packed model (its several inputs / outputs), else None."""
    packing = packing_of(model)
    return packing.layout if packing else None


def graph_packing(graph: Graph) -> Packing | None:
    """The :class:`Packing` of a packed graph, else None."""
    inputs, order_in = dict(graph.inputs), list(graph.inputs)
    if PACKED_INPUT in graph.inputs:
        crops = [n for n in graph.nodes if n.name.startswith(SPLIT_PREFIX) and n.spec.class_name == "Cropping1D"]
        shaped = {c.name: graph.consumers(c.name)[0] for c in crops}
        inputs = {shaped[c.name].name: shaped[c.name].shape for c in crops}
        order_in = [shaped[c.name].name for c in sorted(crops, key=lambda c: int(c.name[len(SPLIT_PREFIX) :]))]
    outputs, order_out = {o: graph.shape(o) for o in graph.outputs}, list(graph.outputs)
    if graph.outputs == [PACKED_OUTPUT] and graph.node(PACKED_OUTPUT).spec.class_name == "Reshape":  # one image out
        order_out = list(graph.node(PACKED_OUTPUT).inputs)
        outputs = {order_out[0]: graph.shape(order_out[0])}
    elif graph.outputs == [PACKED_OUTPUT]:
        flats = [graph.node(n) for n in graph.node(PACKED_OUTPUT).inputs]
        outputs = {f.inputs[0]: graph.shape(f.inputs[0]) for f in flats}
        order_out = [f.inputs[0] for f in sorted(flats, key=lambda f: int(f.name[len(FLAT_PREFIX) :]))]
    if PACKED_INPUT not in graph.inputs and graph.outputs != [PACKED_OUTPUT]:
        return None
    return Packing(Layout.of(inputs, outputs), tuple(order_in), tuple(order_out))


def unpack_model(model):
    """The model with its own inputs and outputs again, in their own order (the model itself when not packed)."""
    names = {layer.name for layer in getattr(model, "layers", [])}
    if PACKED_OUTPUT not in names and _COLUMN not in names:
        return model
    return to_keras(unpack_graph(graph_from_model(model, unsafe=True)))


def unpack_graph(graph: Graph) -> Graph:
    packing = graph_packing(graph)
    if packing is None:
        return graph
    out = graph.copy()
    dropped = set()
    if PACKED_INPUT in graph.inputs:
        shapes = {t.name: t.shape for t in packing.layout.inputs}
        dropped |= {_COLUMN, *packing.input_order}
        dropped |= {n.name for n in graph.nodes if n.name.startswith(SPLIT_PREFIX)}
        out.inputs = {name: shapes[name] for name in packing.input_order}
    if graph.outputs == [PACKED_OUTPUT]:
        flats = [n for n in graph.node(PACKED_OUTPUT).inputs if n.startswith(FLAT_PREFIX)]  # one image out: none
        dropped |= {PACKED_OUTPUT, *flats}
        out.outputs = list(packing.output_order)
    out.nodes = [n for n in out.nodes if n.name not in dropped]
    return out


# --- artifacts: named tensors ---------------------------------------------------------------------


def name_onnx_tensors(proto, packing: Packing | None, packed_input: str, packed_output: str):
    """The converted packed graph with one input per model input and (several outputs) one output per model output.

    In front: each named input [N, *shape] is reshaped to [N, size] and concatenated into what was the packed
    input; behind: each output's columns are sliced out of the packed output and reshaped to its shape. Nothing
    else changes (the int8 and float16 graphs keep their quantized nodes).
    """
    if packing is None:
        return proto
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    layout = packing.layout
    taken = {v for n in graph.node for v in [*n.input, *n.output]} | {t.name for t in graph.initializer}
    clash = [
        t.name
        for t in [*layout.inputs, *(layout.outputs if packing.packs_outputs else ())]
        if t.name in taken and t.name not in (packed_input, packed_output)
    ]
    if clash:
        raise UnsupportedLayerError(clash[0], "tensor", "its name is taken by a value of the converted graph")
    inner = "deploykit_packed/" + packed_input
    if packing.packs_inputs:
        for node in graph.node:
            node.input[:] = [inner if i == packed_input else i for i in node.input]
        front = []
        for t in layout.inputs:
            shape = numpy_helper.from_array(np.array([-1, t.size], np.int64), f"deploykit_shape/{t.name}")
            graph.initializer.append(shape)
            front.append(
                helper.make_node(
                    "Reshape", [t.name, shape.name], [f"deploykit_flat/{t.name}"], name=f"deploykit_flat/{t.name}"
                )
            )
        front.append(helper.make_node("Concat", [n.output[0] for n in front], [inner], axis=1, name="deploykit_pack"))
        old = list(graph.node)
        del graph.node[:]
        graph.node.extend(front + old)
        kept = [v for v in graph.input if v.name != packed_input]
        del graph.input[:]
        graph.input.extend(
            [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, ["N", *t.shape]) for t in layout.inputs] + kept
        )
    if packing.packs_outputs:
        kept = [v for v in graph.output if v.name != packed_output]
        elem = next(v for v in graph.output if v.name == packed_output).type.tensor_type.elem_type
        for t in layout.outputs:
            s = layout.columns(t.name)
            consts = {
                k: numpy_helper.from_array(np.array(v, np.int64), f"deploykit_{k}/{t.name}")
                for k, v in (("starts", [s.start]), ("ends", [s.stop]), ("axes", [1]), ("shape", [-1, *t.shape]))
            }
            graph.initializer.extend(consts.values())
            sliced = f"deploykit_slice/{t.name}"
            graph.node.append(
                helper.make_node(
                    "Slice",
                    [packed_output, consts["starts"].name, consts["ends"].name, consts["axes"].name],
                    [sliced],
                    name=sliced,
                )
            )
            graph.node.append(
                helper.make_node("Reshape", [sliced, consts["shape"].name], [t.name], name=f"deploykit_unflat/{t.name}")
            )
        del graph.output[:]
        graph.output.extend(
            [helper.make_tensor_value_info(t.name, elem, ["N", *t.shape]) for t in layout.outputs] + kept
        )
    onnx.checker.check_model(proto)
    return proto


def tflite_function(model, packing: Packing, single, input_name: str):
    """``(function, input signature)`` the TFLite converter takes for a packed model: named inputs, named outputs.

    ``single(x)`` is the one-output signature's function (the deterministic output names of its kind), used
    when only the inputs are packed; one input keeps the contract name ``input_name``.
    """
    from deploykit.backend import tf

    layout = packing.layout
    if packing.packs_inputs:
        specs = [tf.TensorSpec((None, *t.shape), tf.float32, name=t.name) for t in layout.inputs]
    else:
        specs = [tf.TensorSpec((None, *layout.inputs[0].shape), tf.float32, name=input_name)]

    def outputs(*xs):
        x = xs[0] if len(xs) == 1 else tf.concat([tf.reshape(v, (-1, t.size)) for v, t in zip(xs, layout.inputs)], 1)
        if not packing.packs_outputs:
            return single(x)
        out = model(x, training=False)
        return {t.name: tf.reshape(out[:, layout.columns(t.name)], (-1, *t.shape)) for t in layout.outputs}

    return outputs, specs


def representative_rows(packing: Packing | None, calibration):
    """The converter's representative dataset: each calibration row as the signature takes it (one array per input)."""
    if packing is None or not packing.packs_inputs:
        return lambda: ([row[None]] for row in calibration)
    names = packing.layout.input_names()
    return lambda: ([packing.layout.split_inputs(row[None])[n] for n in names] for row in calibration)
