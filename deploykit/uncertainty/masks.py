"""A cheaper dropout mask for MC sampling: several Bernoulli bits from each random number (prototype).

onnxruntime's ``Dropout(training_mode=true)`` draws one random number per
element; on the chapter's model with input dropout that is 78,400 draws per MC
call (T = 100) for the input alone, and it dominates the call. This module
builds, with standard ONNX operators only (any onnxruntime client runs it), a
mask from ``k = 24 // bits`` times fewer draws:

1. ``RandomUniformLike`` (float32) on a [R, m] slice of the input, m = ceil(W / k);
   float32 carries 24 random bits (onnxruntime draws one engine value per float);
2. ``field_j = frac(u * 2^(j*bits))`` for j < k (Unsqueeze, broadcast Mul by
   [1, 2^bits, ...], ``y - Floor(y)``; exact in float32): the top ``bits`` bits of
   each field are independent uniform integers in [0, 2^bits) (24 bits of u);
3. ``keep = field >= c / 2^bits`` with ``c = round(rate * 2^bits)``, laid out [R, k, m], reshaped to
   [R, k*m] and sliced to [R, W]; the output is ``x * keep / (1 - c / 2^bits)``.

The rate is represented as ``c / 2^bits``: within 2^-(bits+1) of the requested
rate (bits = 8: within 2^-9 = 0.002; 0.2 becomes 51/256 = 0.19922), and the
scaling uses the represented rate, so the output's expectation is exactly x.
``represented_rate`` gives the value. Row r, column j*m + i... are filled by
field j of draw (r, i): neighbouring columns come from different draws.
(Layout [R, k, m], not [R, m, k]: onnxruntime broadcasts a size-k inner axis slowly.)

Seeding: a ``seed`` gives the node its own generator (a new session repeats the
same sequence); without one onnxruntime seeds unseeded random nodes from one
process-wide value, so sessions of one process repeat each other's draws (see
:mod:`deploykit.uncertainty.mc_graph`). Pass a seed per graph (e.g. from the
MC config) when that matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deploykit.configs import Config, fraction, integer

FLOAT_BITS = 24  # random bits in one float32 uniform


@dataclass(frozen=True)
class MaskConfig(Config):
    """The mask's parameters, validated on construction."""

    rate: float
    width: int  # W: the (static) size of the masked last axis
    bits: int = 8  # resolution of the rate: 2^-bits; k = 24 // bits masks per draw
    seed: int | None = None
    opset: int = 17

    def __post_init__(self) -> None:
        fraction("rate", self.rate)
        integer("width", self.width, 1)
        integer("bits", self.bits, 8, 12)  # the rate is represented within 2^-(bits+1)
        integer("seed", self.seed, 0, optional=True)
        integer("opset", self.opset, 13, 18)

    @property
    def per_draw(self) -> int:
        return FLOAT_BITS // self.bits

    @property
    def threshold(self) -> int:
        return int(round(self.rate * 2**self.bits))

    @property
    def represented_rate(self) -> float:
        return self.threshold / 2**self.bits


def bernoulli_mask_nodes(input_name: str, config: MaskConfig, prefix: str = "mask") -> tuple[list, str, str]:
    """Nodes (constants as ``Constant`` nodes) that drop out ``input_name`` [R, W] with few random draws.

    Returns ``(nodes, output, keep)``: ``output`` = input * keep / (1 - represented rate)
    (float32 [R, W]) and ``keep`` the bool mask [R, W]. Every tensor name starts with ``prefix/``.
    """
    from onnx import TensorProto, helper

    k, bits = config.per_draw, config.bits
    m = math.ceil(config.width / k)
    nodes: list = []

    def const(name: str, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        full = f"{prefix}/{name}"
        nodes.append(helper.make_node("Constant", [], [full], value=numpy_helper.from_array(np.asarray(value, dtype), full)))
        return full

    def op(op_type: str, inputs: list[str], name: str, **attrs) -> str:
        full = f"{prefix}/{name}"
        nodes.append(helper.make_node(op_type, inputs, [full], name=f"{full}_node", **attrs))
        return full

    seed = {} if config.seed is None else {"seed": float(config.seed)}
    shaped = op("Slice", [input_name, const("zero", [0], np.int64), const("m", [m], np.int64), const("axis1", [1], np.int64)],
                "draw_shape")
    u = op("RandomUniformLike", [shaped], "uniform", dtype=TensorProto.FLOAT, **seed)
    # Field j (the bits of u below position j*bits): frac(u * 2^(j*bits)); exact in float32 (power-of-two
    # scaling, and subtracting the integer part is exact). Its top `bits` bits are a uniform integer in
    # [0, 2^bits), so frac >= c / 2^bits keeps with probability 1 - c / 2^bits.
    # [R, 1, m] * [k, 1] -> [R, k, m]: broadcasting over the long contiguous axis (a size-k inner axis is slow).
    spread = op("Mul", [op("Unsqueeze", [u, const("axis1u", [1], np.int64)], "uniform3d"),
                        const("shifts", [[float(2 ** (j * bits))] for j in range(k)])], "spread")
    field = op("Sub", [spread, op("Floor", [spread], "integer_part")], "field")
    keep3 = op("GreaterOrEqual", [field, const("threshold", float(config.represented_rate))], "keep3d")
    flat = op("Reshape", [keep3, const("flat_shape", [0, m * k], np.int64)], "keep_all")
    keep = flat if m * k == config.width else op(
        "Slice", [flat, const("zero2", [0], np.int64), const("width", [config.width], np.int64), const("axis1b", [1], np.int64)],
        "keep_sliced")
    scale = 1.0 / (1.0 - config.represented_rate)
    factor = op("Where", [keep, const("inv_keep", scale), const("dropped", 0.0)], "factor")  # one pass, not Cast + Mul
    return nodes, op("Mul", [input_name, factor], "output"), keep


def mask_model(config: MaskConfig, rows: int | None = None):
    """A standalone model ``input`` [R, W] -> ``output``, ``keep`` (to test and time the mask alone)."""
    from onnx import TensorProto, helper

    nodes, output, keep = bernoulli_mask_nodes("input", config)
    nodes.append(helper.make_node("Identity", [output], ["output"]))
    nodes.append(helper.make_node("Identity", [keep], ["keep"]))
    graph = helper.make_graph(nodes, "bernoulli_mask", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [rows or "R", config.width])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [rows or "R", config.width]),
                               helper.make_tensor_value_info("keep", TensorProto.BOOL, [rows or "R", config.width])])
    opsets = [helper.make_opsetid("", config.opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def dropout_model(rate: float, width: int, opset: int = 17, seed: int | None = None):
    """The reference: ``Dropout(training_mode=true)`` on ``input`` [R, W] -> ``output``, ``keep``."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(rate, np.float32), "ratio"), numpy_helper.from_array(np.array(True), "training")]
    node = helper.make_node("Dropout", ["input", "ratio", "training"], ["output", "keep"], **({} if seed is None else {"seed": seed}))
    graph = helper.make_graph([node], "dropout", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["R", width])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["R", width]),
                               helper.make_tensor_value_info("keep", TensorProto.BOOL, ["R", width])], initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
