"""A Triton model repository of ONNX artifacts (``<name>/config.pbtxt`` + ``<name>/1/model.onnx``) and a KServe
manifest.

Each config names the graph's real inputs and outputs with their Triton data
types and dims without the batch axis (Triton adds it, up to
``max_batch_size``). A per-row scalar (ONNX shape ``[N]``, e.g. the MC model's
``predicted_class``) is ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``, as
Triton requires of batched models. An output whose first axis is not the batch
axis (the MC model's optional ``[T, N, C]`` samples) cannot be batched and is
left out; an optional input (the MC model's ``samples``: optional-typed, or
backed by an initializer below opset 15) is left out too, so Triton serves it
with its default: Triton's onnxruntime backend cannot feed an optional-typed
tensor, so the repository's copy gives it an empty ``Optional`` instead. ``kserve.yaml`` beside the repository
deploys it with one ``kubectl apply``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from deploykit.atomic import atomic_dir, write_text
from deploykit.core.contract import OUTPUT_NAME
from deploykit.core.task import Task
from deploykit.errors import UsageError
from deploykit.export.config import InstanceKind, TritonConfig

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.txt"
KSERVE_FILE = "kserve.yaml"
STORAGE_URI_PARAMETER = "${STORAGE_URI}"

#: onnx.TensorProto data type number -> Triton data type.
TRITON_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
_KIND = {InstanceKind.CPU: "KIND_CPU", InstanceKind.GPU: "KIND_GPU"}


def write_triton_models(
    onnx_files: list[Path],
    repository: str | os.PathLike,
    config: TritonConfig | None = None,
    *,
    class_names: list[str] | None = None,
) -> list[str]:
    """Every ONNX file as a model of ``repository`` (named by its stem), plus ``kserve.yaml`` beside it.

    Returns the model names. ``config.storage_uri`` is where the repository
    will be uploaded; by default the manifest holds the ``${STORAGE_URI}``
    parameter (``envsubst < kserve.yaml | kubectl apply -f -``).
    """
    config = config or TritonConfig()
    names = []
    for path in onnx_files:
        write_triton_repository(path, repository, Path(path).stem, config=config, class_names=class_names)
        names.append(Path(path).stem)
    write_kserve_manifest(Path(repository).parent / KSERVE_FILE, config.service_name, config.storage_uri, config)
    return names


def write_triton_repository(
    onnx_path: str | os.PathLike,
    repository: str | os.PathLike,
    name: str | None = None,
    *,
    config: TritonConfig | None = None,
    max_batch_size: int | None = None,
    version: int = 1,
    class_names: list[str] | None = None,
    force: bool = False,
) -> Path:
    """Write model ``name`` (default: the file's stem) into ``repository``; return the model folder.

    ``config`` sets batching and instance groups (``max_batch_size`` overrides
    its field). The folder is built aside and moved into place; an existing
    one is replaced only with ``force``. Class names (default: the file's
    deploykit metadata) go to ``labels.txt``, referenced by the class
    probabilities output, so Triton's classification extension returns labels.
    """
    import onnx

    from deploykit.export.metadata import read_metadata

    onnx_path = Path(onnx_path)
    if onnx_path.suffix.lower() != ".onnx" or not onnx_path.is_file():
        raise UsageError(f"Triton repository: {onnx_path} is not an .onnx file")
    name = name or onnx_path.stem
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UsageError(f"Triton model name {name!r}: use letters, digits, '_', '.' and '-'")
    config = _with_batch(config or TritonConfig(), max_batch_size)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"Triton version must be a positive integer, got {version!r}")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    fixed = _without_optional_inputs(proto)
    meta = read_metadata(proto)
    if meta.task_and_output()[0] is Task.REGRESSION:
        class_names = None  # a regressor's outputs are targets, not classes: no labels file
    elif class_names is None:
        class_names = meta.class_names or None
    text = triton_config(proto, name, config, labels=len(class_names) if class_names else 0)
    with atomic_dir(Path(repository) / name, force=force) as staging:
        (staging / str(version)).mkdir()
        if fixed:  # the served copy differs from the artifact only where Triton needs it to
            onnx.save(proto, str(staging / str(version) / MODEL_FILE))
        else:
            shutil.copyfile(onnx_path, staging / str(version) / MODEL_FILE)
        (staging / CONFIG_FILE).write_text(text, encoding="utf-8")
        if class_names:
            (staging / LABELS_FILE).write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
    return Path(repository) / name


def _without_optional_inputs(proto) -> list[str]:
    """Replace each optional-typed graph input of ``proto`` by an empty ``Optional`` node (so its default applies).

    Returns the names replaced (none: ``proto`` is unchanged and the file can be copied byte for byte).
    """
    from deploykit.onnx.graph_ops import empty_optionals

    nodes = empty_optionals(proto.graph)
    for node in reversed(nodes):
        proto.graph.input.remove(next(v for v in proto.graph.input if v.name == node.output[0]))
        proto.graph.node.insert(0, node)
    return [n.output[0] for n in nodes]


def _with_batch(config: TritonConfig, max_batch_size: int | None) -> TritonConfig:
    if max_batch_size is None:
        return config
    import dataclasses

    try:
        return dataclasses.replace(config, max_batch_size=max_batch_size)
    except Exception as exc:  # ConfigError from TritonConfig: a usage error of this call
        raise UsageError(f"Triton {exc}") from None


def triton_config(proto, name: str, config: TritonConfig, labels: int = 0) -> str:
    """The ``config.pbtxt`` text of an ONNX graph whose first axis is the batch axis.

    ``labels``: the number of class names; the ``probabilities`` output (a logits classifier's too,
    not its ``logits``), else the first output of shape ``[batch, labels]``, gets ``label_filename``.
    """
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    if not inputs:
        raise UsageError(f"Triton repository: model {name!r} has no input without a default")
    batch = _batch_axis(inputs[0])
    outputs = [v for v in proto.graph.output if _is_batched(v, batch)]
    shaped = sorted((v for v in outputs if _shape(v)[1:] == [labels]), key=lambda v: v.name != OUTPUT_NAME)
    label_output = shaped[0].name if labels and shaped else None
    blocks = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {config.max_batch_size}"]
    blocks.append("input [\n" + ",\n".join(_tensor(v) for v in inputs) + "\n]")
    blocks.append("output [\n" + ",\n".join(_tensor(v, v.name == label_output) for v in outputs) + "\n]")
    blocks.append(
        f"instance_group [\n  {{\n    kind: {_KIND[config.instance_kind]}\n    count: {config.instances}\n  }}\n]"
    )
    blocks.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {config.max_queue_delay_us}\n}}")
    return "\n".join(blocks) + "\n"


def _shape(value_info) -> list:
    return [
        d.dim_param or (d.dim_value if d.HasField("dim_value") else -1) for d in value_info.type.tensor_type.shape.dim
    ]


def _batch_axis(value_info):
    shape = _shape(value_info)
    if not shape:
        raise UsageError(f"Triton repository: input {value_info.name!r} has no batch axis")
    return shape[0]


def _is_batched(value_info, batch) -> bool:
    """An output is batched unless the input's symbolic batch axis sits further in (the MC ``[T, N, C]`` samples).

    Converters name axes freely (tf2onnx gives the output's batch axis its own
    name), so a first axis of another name still counts as the batch axis.
    """
    shape = _shape(value_info)
    return bool(shape) and not (isinstance(batch, str) and batch in shape[1:])


def _tensor(value_info, labels: bool = False) -> str:
    tensor = value_info.type.tensor_type
    dtype = TRITON_TYPES.get(tensor.elem_type)
    if dtype is None:
        raise UsageError(
            f"Triton repository: tensor {value_info.name!r} has an ONNX type ({tensor.elem_type}) Triton does not serve"
        )
    dims = [d if isinstance(d, int) else -1 for d in _shape(value_info)[1:]]
    lines = ["  {", f'    name: "{value_info.name}"', f"    data_type: {dtype}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
    else:  # a per-row scalar: Triton wants at least one dim; the model sees the batch axis alone
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    if labels:
        lines.append(f'    label_filename: "{LABELS_FILE}"')
    return "\n".join(lines + ["  }"])


def write_kserve_manifest(
    path: str | os.PathLike, name: str, storage_uri: str = STORAGE_URI_PARAMETER, config: TritonConfig | None = None
) -> Path:
    """A KServe ``InferenceService`` (``modelFormat: onnx``, ``protocolVersion: v2``) serving the repository.

    ``storage_uri`` is where the Triton repository is uploaded (s3://, gs://,
    pvc://...). KServe's Triton runtime loads every model of the repository.
    """
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise UsageError(f"KServe service name {name!r}: use lowercase letters, digits and '-' (a DNS label)")
    if not isinstance(storage_uri, str) or not storage_uri.strip() or any(c in storage_uri for c in "\n\"'"):
        raise UsageError(f"KServe storage URI must be one line of text, got {storage_uri!r}")
    config = config or TritonConfig()
    gpu = (
        ["      resources:", "        limits:", '          nvidia.com/gpu: "1"']
        if config.instance_kind is InstanceKind.GPU
        else []
    )
    lines = [
        "# KServe InferenceService for the Triton model repository beside this file.",
        f"# Upload the repository, then: STORAGE_URI=s3://bucket/path envsubst < {KSERVE_FILE} | kubectl apply -f -",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {name}",
        "spec:",
        "  predictor:",
        "    model:",
        "      modelFormat:",
        "        name: onnx",
        "      protocolVersion: v2",
        f'      storageUri: "{storage_uri}"',
        *gpu,
    ]
    return write_text(Path(path), "\n".join(lines) + "\n")
