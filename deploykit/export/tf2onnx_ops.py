"""tf2onnx handlers for TensorFlow ops it lacks, registered on import (before any conversion).

``Erfc``: tf_keras's exact GELU (``activation="gelu"``) is ``0.5 * x * erfc(-x / sqrt(2))``, and tf2onnx
has no Erfc handler ("No Op registered for Erfc"). ONNX has ``Erf``: ``erfc(x) = 1 - erf(x)``, exact to
float32 rounding for GELU (the product with ``x`` keeps the absolute error at ~1e-7).
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
