"""An ONNX file as deploykit gives it to onnxruntime: checked, its external data contained and read into memory.

onnxruntime reads a tensor's external data from whatever ``location`` the
file names; before 1.32 that could be ``../secret.txt``, an absolute path or a
symlink out of the model's folder, and ``deploykit serve`` would then return
bytes derived from that file to any client. deploykit does not rely on the
runtime's version for this: :func:`model_bytes` resolves every location itself
(under the model's folder, a regular file, no symlink leaving the folder, the
declared offset + length inside the file and matching the tensor's size) and
copies the data into the model, so onnxruntime gets one self-contained
protobuf. As a side effect a data file changed or truncated under a running
server cannot crash it: the server no longer maps it.

It also bounds what the file declares before anything is allocated: an input
row (``[N, 250000000]`` floats is 1 GB per row) and the output of a
``ConstantOfShape``, ``Expand`` or ``Tile`` whose shape is a constant
(:data:`~deploykit.limits.TENSOR_BYTES`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from deploykit.errors import ModelLoadError
from deploykit.files import read_bytes, regular_file
from deploykit.limits import ONNX_BYTES, TENSOR_BYTES

#: Bytes per element of the ONNX tensor types (TensorProto.DataType values); others count as 8.
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}
#: Ops whose output size is given by a shape input: op -> index of that input.
_SHAPED = {"ConstantOfShape": 0, "Expand": 1, "Tile": 1}
_MAX_RANK = 64
_EXTERNAL, _DEFAULT = 1, 0  # TensorProto.DataLocation
_proto_module = None


def _onnx_proto():
    """onnx's generated protobuf classes, without importing the ``onnx`` package (the server must not: it
    costs half a second and imports what the server never uses). Once onnx is imported, its own module."""
    global _proto_module
    if "onnx" in sys.modules:
        return sys.modules["onnx"].onnx_ml_pb2
    if _proto_module is None:
        spec = importlib.util.find_spec("onnx")  # finds the package, imports nothing
        path = os.path.join(os.path.dirname(spec.origin), "onnx_ml_pb2.py")
        module_spec = importlib.util.spec_from_file_location("deploykit._onnx_ml_pb2", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        _proto_module = module
    return _proto_module


def model_bytes(path: str | os.PathLike) -> bytes:
    """The ONNX file at ``path``, checked, with its external data inlined; a ModelLoadError names what is wrong."""
    path = Path(path)
    raw = read_bytes(path, "model", ModelLoadError, ONNX_BYTES)
    proto = _onnx_proto().ModelProto()
    try:
        proto.ParseFromString(raw)
    except Exception:  # not a protobuf: onnxruntime refuses it with its own words
        return raw
    check_declared_sizes(proto, path)
    external = [t for t in _tensors(proto.graph) if t.data_location == _EXTERNAL]
    if not external:
        return raw
    total = len(raw)
    for tensor in external:
        total += _inline(tensor, path, total)
    return proto.SerializeToString()


def load_onnx(path: str | os.PathLike):
    """An ``onnx.ModelProto`` of a user's ONNX file, read through :func:`model_bytes` (checked, external data
    contained and inlined) rather than ``onnx.load``, whose own checks depend on the onnx version."""
    import onnx

    return onnx.load_from_string(model_bytes(path))


def _inline(tensor, path: Path, loaded: int) -> int:
    """Read ``tensor``'s external data (checked) into its ``raw_data``; the bytes read."""
    info = {e.key: e.value for e in tensor.external_data}
    file, offset, length = _external_span(tensor, info, path)
    ONNX_BYTES.check(path, loaded + length, "the model with its external data")
    with open(file, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise ModelLoadError(f"model {path}: external data of tensor {tensor.name!r} changed while it was read")
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = _DEFAULT
    return length


def _external_span(tensor, info: dict, path: Path) -> tuple[str, int, int]:
    """(file, offset, length) of a tensor's external data, every part checked against the model's folder."""
    where = f"model {path}: tensor {tensor.name!r}"
    location = info.get("location", "")
    if not location or os.path.isabs(location) or "\\" in location or "\0" in location:
        raise ModelLoadError(
            f"{where}: external data location {location!r} must be a relative path inside the model's folder"
        )
    folder = os.path.realpath(path.parent)
    file = os.path.realpath(os.path.join(folder, location))
    if os.path.commonpath([folder, file]) != folder or file == folder:
        raise ModelLoadError(
            f"{where}: external data location {location!r} leads out of the model's folder ({path.parent}); refused"
        )
    size = regular_file(file, f"{where}: external data", ModelLoadError)
    offset, length = _integer(info.get("offset", "0"), where, "offset"), info.get("length")
    length = size - offset if length is None else _integer(length, where, "length")
    if offset + length > size:
        raise ModelLoadError(
            f"{where}: external data declares offset {offset} + length {length} bytes, but "
            f"{location!r} holds {size} bytes"
        )
    expected = _tensor_bytes(tensor)
    if expected is not None and expected != length:
        raise ModelLoadError(
            f"{where}: external data holds {length} bytes, its shape {list(tensor.dims)} needs {expected}"
        )
    return file, offset, length


def _integer(value: str, where: str, key: str) -> int:
    if not value.isdigit():
        raise ModelLoadError(f"{where}: external data {key} must be a non-negative integer, got {value[:40]!r}")
    return int(value)


def _tensor_bytes(tensor) -> int | None:
    """Bytes a tensor's dims and type need (None for strings and unknown types)."""
    size = _ITEMSIZE.get(tensor.data_type)
    return None if size is None else math.prod(tensor.dims) * size


def _tensors(graph) -> Iterator:
    """Every TensorProto of a graph and its subgraphs: initializers, sparse ones, node attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def check_declared_sizes(proto, path: Path) -> None:
    """Refuse an input row or a constant-shaped output over TENSOR_BYTES, before onnxruntime allocates it."""
    for value in proto.graph.input:
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in kind.shape.dim][1:]  # per row
        _check_tensor(path, f"input {value.name!r} (per row)", dims, _ITEMSIZE.get(kind.elem_type, 8))
    _check_graph(proto.graph, path, {})


def _check_graph(graph, path: Path, outer: dict) -> None:
    constants = {**outer, **{t.name: t for t in graph.initializer}}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None and node.output:
                constants[node.output[0]] = value
        index = _SHAPED.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in constants:
            _check_shaped(node, constants, path)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _check_graph(sub, path, constants)


def _check_shaped(node, constants: dict, path: Path) -> None:
    shape_tensor = constants[node.input[_SHAPED[node.op_type]]]
    if math.prod(shape_tensor.dims) > _MAX_RANK:
        raise ModelLoadError(
            f"model {path}: {node.op_type} node {node.name!r} has a shape of "
            f"{math.prod(shape_tensor.dims)} dimensions; refused"
        )
    dims = _integers(shape_tensor)
    if dims is None:
        return
    itemsize = 4
    if node.op_type == "ConstantOfShape":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        itemsize = _ITEMSIZE.get(value.data_type, 8) if value is not None else 4
    elif node.op_type == "Tile" and node.input[0] in constants:
        dims.append(math.prod(constants[node.input[0]].dims))  # repeats x the tiled constant's size
    _check_tensor(path, f"{node.op_type} node {node.name!r}", dims, itemsize)


def _integers(tensor) -> list[int] | None:
    """The values of a small INT64 / INT32 tensor (a shape), or None when it holds something else."""
    import numpy as np

    kinds = {7: ("<i8", "int64_data"), 6: ("<i4", "int32_data")}
    if tensor.data_type not in kinds or tensor.data_location == _EXTERNAL:
        return None
    dtype, field = kinds[tensor.data_type]
    if tensor.raw_data:
        return [int(v) for v in np.frombuffer(tensor.raw_data, dtype=dtype)]
    return [int(v) for v in getattr(tensor, field)]


def _check_tensor(path: Path, what: str, dims: list[int], itemsize: int) -> None:
    if any(d < 0 for d in dims):
        return  # -1 in Expand keeps a dimension; onnxruntime refuses other negatives itself
    TENSOR_BYTES.check(path, math.prod(dims) * itemsize, f"{what} of shape {dims}")
