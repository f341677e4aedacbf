"""A Triton / KServe model repository for an ONNX artifact: ``<name>/config.pbtxt`` + ``<name>/1/model.onnx``.

The config names the graph's real inputs and outputs, their Triton data
types and their dims without the batch axis (Triton adds it up to
``max_batch_size``), so the same file can be served by Triton, or by
KServe's Triton runtime, on many nodes.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from deploykit.atomic import atomic_dir
from deploykit.errors import UsageError

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.txt"

#: onnx.TensorProto data type number -> Triton data type.
TRITON_TYPES = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
    7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
    13: "TYPE_UINT64", 16: "TYPE_BF16",
}


def write_triton_repository(
    onnx_path: str | os.PathLike,
    repository: str | os.PathLike,
    name: str | None = None,
    *,
    max_batch_size: int = 256,
    version: int = 1,
    class_names: list[str] | None = None,
    force: bool = False,
) -> Path:
    """Write model ``name`` (default: the file's stem) into ``repository``; return the model folder.

    The folder is built aside and moved into place; an existing one is
    replaced only with ``force``. Class names (default: the file's deploykit
    metadata) go to ``labels.txt``, referenced by the output, so Triton's
    classification extension returns labels.
    """
    import onnx

    from deploykit.export.metadata import read_metadata

    onnx_path = Path(onnx_path)
    if onnx_path.suffix.lower() != ".onnx" or not onnx_path.is_file():
        raise UsageError(f"Triton repository: {onnx_path} is not an .onnx file")
    name = name or onnx_path.stem
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UsageError(f"Triton model name {name!r}: use letters, digits, '_', '.' and '-'")
    for what, value in (("max_batch_size", max_batch_size), ("version", version)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"Triton {what} must be a positive integer, got {value!r}")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    if class_names is None:
        class_names = read_metadata(proto).class_names or None
    text = triton_config(proto, name, max_batch_size, labels=bool(class_names))
    with atomic_dir(Path(repository) / name, force=force) as staging:
        (staging / str(version)).mkdir()
        shutil.copyfile(onnx_path, staging / str(version) / MODEL_FILE)
        (staging / CONFIG_FILE).write_text(text, encoding="utf-8")
        if class_names:
            (staging / LABELS_FILE).write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
    return Path(repository) / name


def triton_config(proto, name: str, max_batch_size: int, labels: bool = False) -> str:
    """The ``config.pbtxt`` text of an ONNX graph (first axis = batch)."""
    initializers = {t.name for t in proto.graph.initializer}
    # inputs with a default (initializer-backed, or optional-typed like the MC model's `samples`) may be omitted
    inputs = [v for v in proto.graph.input if v.name not in initializers and v.type.HasField("tensor_type")]
    blocks = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}"]
    blocks.append("input [\n" + ",\n".join(_tensor(v) for v in inputs) + "\n]")
    outputs = [_tensor(v, f'    label_filename: "{LABELS_FILE}"' if labels and i == 0 else "") for i, v in enumerate(proto.graph.output)]
    blocks.append("output [\n" + ",\n".join(outputs) + "\n]")
    blocks.append("instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]")
    blocks.append("dynamic_batching { }")
    return "\n".join(blocks) + "\n"


def _tensor(value_info, extra: str = "") -> str:
    tensor = value_info.type.tensor_type
    dtype = TRITON_TYPES.get(tensor.elem_type)
    if dtype is None:
        raise UsageError(f"Triton repository: tensor {value_info.name!r} has an ONNX type ({tensor.elem_type}) Triton does not serve")
    if not tensor.shape.dim:
        raise UsageError(f"Triton repository: tensor {value_info.name!r} has no batch axis")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim[1:]]
    lines = ["  {", f'    name: "{value_info.name}"', f"    data_type: {dtype}", f"    dims: [ {', '.join(map(str, dims))} ]"]
    if extra:
        lines.append(extra)
    return "\n".join(lines + ["  }"])
