"""The conformal outputs in the ONNX graph: ``prediction_set`` / ``set_size`` or ``lower`` / ``upper``.

The same computation as :mod:`deploykit.uncertainty.conformal` (float32 in the graph), from the model's
own outputs, so an onnxruntime or Triton client gets the sets without deploykit code. The scores need
no sort: the mass of the classes above y is sum_j p_j [p_j > p_y], one [N, C, C] comparison (C is a
class count, so this costs next to nothing beside the network). The thresholds are initializers; the
``deploykit.conformal`` metadata says how they were calibrated.
"""

from __future__ import annotations

import numpy as np

from deploykit.core.contract import CONFORMAL_KEY as METADATA_KEY
from deploykit.core.contract import (
    KIND_DETERMINISTIC,
    LOWER_OUTPUT,
    OUTPUT_NAME,
    PREDICTION_NAME,
    PREDICTION_SET_OUTPUT,
    SET_SIZE_OUTPUT,
    UPPER_OUTPUT,
)
from deploykit.core.task import Task
from deploykit.errors import UsageError
from deploykit.export.contract_onnx import output_info
from deploykit.onnx.builder import GraphBuilder
from deploykit.onnx.graph_ops import get_prop, set_props, toposort
from deploykit.uncertainty.conformal import STD_FLOOR, Conformal, ConformalMethod


def add_conformal(proto, conformal: Conformal) -> None:
    """Add the conformal outputs and the ``deploykit.conformal`` metadata to a model, in place: a classifier's
    ``prediction_set`` (bool [N, C]) and ``set_size`` (int64 [N]), a regressor's ``lower`` / ``upper`` [N, K]."""
    import onnx
    from onnx import TensorProto

    ed = GraphBuilder.editing(proto, "conformal")
    outputs = {o.name for o in ed.graph.output}
    if outputs & {PREDICTION_SET_OUTPUT, LOWER_OUTPUT}:
        raise UsageError("this ONNX model already has conformal outputs; calibrate the model without them")
    if conformal.regression:
        center = _pick(outputs, ("mean", PREDICTION_NAME), "a regressor's mean or prediction")
        if conformal.method is ConformalMethod.NORMALIZED and "std" not in outputs:
            raise UsageError("normalized conformal intervals need the model's std output (an MC or ensemble model)")
        q = ed.const(np.asarray(conformal.threshold, np.float32))
        if conformal.method is ConformalMethod.ABSOLUTE:
            half = q
        else:
            half = ed.op("Mul", [ed.op("Max", ["std", ed.const(STD_FLOOR)]), q])
        ed.op("Sub", [center, half], output=LOWER_OUTPUT)
        ed.op("Add", [center, half], output=UPPER_OUTPUT)
        n, width = _dims(ed, center)
        ed.graph.output.extend(
            [output_info(o, Task.REGRESSION, KIND_DETERMINISTIC, width, N=n) for o in (LOWER_OUTPUT, UPPER_OUTPUT)]
        )
    else:
        probs = _pick(outputs, ("mean", OUTPUT_NAME), "class probabilities (mean or probabilities)")
        score = _scores(ed, probs, conformal)
        members = ed.op(
            "LessOrEqual", [score, ed.const(np.asarray(conformal.threshold, np.float32))], output=PREDICTION_SET_OUTPUT
        )
        count = ed.reduce("ReduceSum", ed.op("Cast", [members], to=TensorProto.INT64), [1])
        ed.op("Identity", [count], output=SET_SIZE_OUTPUT)
        n, width = _dims(ed, probs)
        ed.graph.output.extend(
            [
                output_info(o, Task.CLASSIFICATION, KIND_DETERMINISTIC, width, N=n)
                for o in (PREDICTION_SET_OUTPUT, SET_SIZE_OUTPUT)
            ]
        )
    toposort(ed.graph)
    set_props(proto, {METADATA_KEY: conformal.metadata_value()})
    onnx.checker.check_model(proto, full_check=True)


def _scores(ed: GraphBuilder, probs: str, conformal: Conformal) -> str:
    """[N, C] scores of every class (see deploykit.uncertainty.conformal.class_scores)."""
    from onnx import TensorProto

    if conformal.method is ConformalMethod.LAC:
        return ed.op("Sub", [ed.const(1.0), probs])
    others = ed.op("Unsqueeze", [probs, ed.const([1], np.int64)])  # [N, 1, C]: p_j
    own = ed.op("Unsqueeze", [probs, ed.const([2], np.int64)])  # [N, C, 1]: p_y
    above = ed.op("Cast", [ed.op("Greater", [others, own])], to=TensorProto.FLOAT)  # [N, C, C]: p_j > p_y
    score = ed.reduce("ReduceSum", ed.op("Mul", [above, others]), [2])
    if conformal.method is ConformalMethod.RAPS and conformal.lam > 0:
        rank = ed.op("Add", [ed.reduce("ReduceSum", above, [2]), ed.const(1.0)])
        excess = ed.op("Relu", [ed.op("Sub", [rank, ed.const(float(conformal.k_reg))])])
        score = ed.op("Add", [score, ed.op("Mul", [excess, ed.const(conformal.lam)])])
    return score


def _pick(outputs: set[str], names: tuple[str, ...], what: str) -> str:
    found = next((n for n in names if n in outputs), None)
    if found is None:
        raise UsageError(f"cannot add conformal outputs: the model has no {what} output ({', '.join(names)})")
    return found


def _dims(ed: GraphBuilder, name: str) -> list:
    """The output's dims as value_info wants them (the batch axis symbolic)."""
    shape = ed.output_info(name).type.tensor_type.shape.dim
    return [d.dim_param or "N" if i == 0 else (d.dim_value or d.dim_param or None) for i, d in enumerate(shape)]


def read_conformal(proto) -> dict | None:
    """The ``deploykit.conformal`` entry of a model's metadata_props, or None."""
    import json

    raw = get_prop(proto, METADATA_KEY)
    return json.loads(raw) if raw else None


def write_with_conformal(path, conformal: Conformal) -> None:
    """Load an ONNX file, add the conformal outputs, save it back atomically."""
    import onnx

    from deploykit.atomic import atomic_path

    proto = onnx.load(str(path))
    add_conformal(proto, conformal)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
