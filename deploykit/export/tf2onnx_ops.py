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


_fresh_node_protos()
