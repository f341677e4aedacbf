"""tf2onnx handlers for TensorFlow ops it lacks, and one fix of its memory, applied on import (before any
conversion).

``Erfc``: tf_keras's exact GELU (``activation="gelu"``) is ``0.5 * x * erfc(-x / sqrt(2))``, and tf2onnx
has no Erfc handler ("No Op registered for Erfc"). ONNX has ``Erf``: ``erfc(x) = 1 - erf(x)``, exact to
float32 rounding for GELU (the product with ``x`` keeps the absolute error at ~1e-7).

Memory: tf2onnx's optimizer rewrites every node's protobuf after each of its passes (``Node.update_proto``
deletes the attributes and adds them again, a Const's weights included), a dozen passes per round until nothing
changes. With upb-backed protobuf a message's arena keeps what is deleted from it until the message itself is freed,
so every pass left one more copy of the weights behind: ConvNeXtTiny's conversion grew by its 112 MB per pass, to
7 GB, and ConvNeXtLarge's was killed at 22 GB on a 24 GiB machine. :func:`_fresh_node_protos` makes each update
write a fresh NodeProto, so the previous one and its arena are freed.

Large models: tf2onnx's large-model path (which the exporter takes for big weights, see
``deploykit.export.convert._convert``) calls ``np.product``, which NumPy 2 removed; :func:`_numpy_for_tf2onnx_graph`
gives ``tf2onnx.graph`` a view of NumPy that has it. The path leaves the weights in an external tensor storage;
:func:`inline_external` puts them back into the model.
"""

from __future__ import annotations

import numpy as np
from tf2onnx import utils
from tf2onnx.handler import tf_op


@tf_op("Erfc")
class Erfc:
    @classmethod
    def version_9(cls, ctx, node, **kwargs):
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        node.type = "Erf"
        one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
        ctx.insert_new_node_on_output(
            "Sub", node.output[0], name=utils.make_name(f"{node.name}_erfc"), inputs=[one.output[0], node.output[0]]
        )


def _fresh_node_protos() -> None:
    """``tf2onnx.graph.Node.update_proto`` on a new NodeProto each time (see the module's docstring); the same
    node fields, inputs, outputs and attributes are written."""
    from onnx import NodeProto
    from tf2onnx.graph import Node

    original = Node.update_proto
    if getattr(original, "deploykit_fresh", False):
        return

    def update_proto(self, external_tensor_storage=None):
        old = self._op
        self._op = NodeProto(name=old.name, op_type=old.op_type, domain=old.domain, doc_string=old.doc_string)
        original(self, external_tensor_storage)

    update_proto.deploykit_fresh = True
    update_proto.original = original  # tf2onnx's own, for a comparison
    Node.update_proto = update_proto


def _numpy_for_tf2onnx_graph() -> None:
    """``tf2onnx.graph`` reads ``np.product`` (an alias of ``np.prod`` NumPy 2 removed) on its large-model path:
    that module alone sees NumPy with the alias; NumPy itself is not changed."""
    import types

    import tf2onnx.graph

    if hasattr(tf2onnx.graph.np, "product"):
        return
    view = types.ModuleType("numpy", "NumPy as tf2onnx.graph reads it (np.product = np.prod)")
    view.__dict__.update(np.__dict__)
    view.product = np.prod
    tf2onnx.graph.np = view


def inline_external(proto, storage) -> int:
    """Move the weights tf2onnx's large-model path kept in ``storage`` (an ``ExternalTensorStorage``) into
    ``proto``'s tensors, in initializers and node attributes at any depth (If/Loop bodies); each is dropped
    from the storage as it moves, so the weights exist once. Returns how many tensors moved."""
    from onnx import TensorProto

    moved = 0
    for tensor in _tensors(proto.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}["location"]
        tensor.raw_data = storage.name_to_tensor_data.pop(location)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
        moved += 1
    return moved


def _tensors(graph):
    """Every TensorProto of ``graph``: its initializers and its nodes' tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


_fresh_node_protos()
_numpy_for_tf2onnx_graph()
