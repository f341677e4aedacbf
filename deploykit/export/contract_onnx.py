"""The ONNX side of the served-output table (:data:`deploykit.core.contract.OUTPUTS`).

The graph builders declare each output from its row (:func:`output_info`: its dtype, and its shape with the
batch, sample and member axes named and the class or target axis sized), so no builder keeps a table of
types of its own; the exporters check the finished graph against the table (:func:`check_model_outputs`)
before writing it, with one error naming the output that breaks it.
"""

from __future__ import annotations

from collections.abc import Mapping

from deploykit.core.contract import ModelKind, check_outputs, spec

#: The table's dtypes as ONNX element types (TensorProto values: FLOAT, INT64, BOOL).
_ELEMENT_TYPES = {"float32": 1, "int64": 7, "bool": 9}
#: The symbolic dims an output is declared with, by axis (the sizes given override them).
_DIM_NAMES = {"N": "N", "T": "T", "K": "K"}


def output_info(name: str, task: str, kind: ModelKind, width: int | None = None, **axes):
    """The ``ValueInfoProto`` of output ``name`` as the table describes it for this task and kind.

    ``width`` sizes its class / target / unit axis; ``axes`` rename the other axes (an ensemble of MC
    members declares its samples ``T="KT"``).
    """
    from onnx import helper

    row = spec(name, task, kind)
    if row is None:
        raise KeyError(f"output {name!r} of a {task} {kind} model is not in deploykit.core.contract.OUTPUTS")
    dims = {**_DIM_NAMES, "classes": width, "targets": width, "units": width, **axes}
    return helper.make_tensor_value_info(name, _ELEMENT_TYPES[row.dtype], [dims[a] for a in row.shape])


def declared(graph_outputs) -> dict[str, tuple[str, list]]:
    """{name: (dtype, shape)} of a graph's outputs, as :func:`deploykit.core.contract.check_outputs` reads them."""
    from onnx import helper

    found = {}
    for o in graph_outputs:
        tensor = o.type.tensor_type
        if not o.type.HasField("tensor_type") or not tensor.elem_type:
            found[o.name] = ("not a tensor", [])
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        found[o.name] = (helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, dims)
    return found


def check_model_outputs(
    proto,
    kind: ModelKind,
    task: str,
    sizes: Mapping[str, int] | None = None,
    *,
    output_kind: str | None = None,
    where: str = "exported model",
) -> None:
    """An :class:`~deploykit.errors.OutputContractError` naming the first output of ``proto`` that is missing
    from, or of another dtype or shape than, the table's rows for this kind and task."""
    check_outputs(where, declared(proto.graph.output), kind, task, sizes, output_kind=output_kind)


def width_sizes(width: int | None, classes: int | None = None) -> dict[str, int]:
    """The table's sized axes for an output of ``width`` units (``classes``: 2 for a binary model's one unit)."""
    if not isinstance(width, int) or width <= 0:
        return {}
    return {"units": width, "targets": width, "classes": classes or width}
