"""The ``metadata_props`` every deploykit ONNX model carries.

Keys are prefixed ``deploykit.``; values are JSON text. Readers (the
predictor, the server, validation) use :func:`read_metadata`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from deploykit._version import __version__
from deploykit.core.contract import KIND_DETERMINISTIC
from deploykit.core.contract import METADATA_PREFIX as PREFIX


@dataclass
class ModelMetadata:
    kind: str = KIND_DETERMINISTIC  # or KIND_MC_DROPOUT
    class_names: list[str] = field(default_factory=list)
    input_shape: list[int] = field(default_factory=list)  # without the batch axis
    steps: list[str] = field(default_factory=list)  # what was done: "fold_batchnorm", "prune(0.80)", "float16"...
    quantization: str = "none"
    sparsity: float = 0.0
    reference_accuracy: float | None = None
    default_samples: int | None = None  # MC models only
    max_samples: int | None = None  # MC models only: the largest `samples` a client may ask for
    version: str = __version__
    task: dict | None = (
        None  # deploykit.core.task: {task: Task value, output: OutputKind value} (None: written before it existed)
    )

    @staticmethod
    def task_entry(task, kind) -> dict:
        """The ``deploykit.task`` value of a (Task, OutputKind)."""
        return {"task": str(task.value), "output": str(kind.value)}

    def task_and_output(self):
        """(Task, OutputKind) from ``deploykit.task``; a file without it is a softmax classifier (what came before)."""
        from deploykit.core.task import OutputKind, Task

        if not self.task:
            return Task.CLASSIFICATION, OutputKind.PROBABILITIES
        return Task(self.task["task"]), OutputKind(self.task["output"])


def write_metadata(proto, meta: ModelMetadata) -> None:
    """Set (replace) the ``ModelMetadata`` entries of an ``onnx.ModelProto``'s metadata_props.

    Only the keys this dataclass owns are replaced: other ``deploykit.*`` entries written by
    later graph edits (``deploykit.temperature``, ``deploykit.selective``, ``deploykit.ensemble``)
    survive a metadata rewrite, whatever the order of the edits.
    """
    owned = {PREFIX + name for name in ModelMetadata.__dataclass_fields__}
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in owned]
    del proto.metadata_props[:]
    for k, v in keep:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    for k, v in vars(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = PREFIX + k, json.dumps(v)


def read_metadata(source) -> ModelMetadata:
    """Read deploykit metadata from a ModelProto, an onnxruntime session, or a path."""
    props: dict[str, str]
    if hasattr(source, "get_modelmeta"):  # onnxruntime.InferenceSession
        props = dict(source.get_modelmeta().custom_metadata_map)
    elif hasattr(source, "metadata_props"):
        props = {p.key: p.value for p in source.metadata_props}
    else:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    values = {}
    for key, raw in props.items():
        if key.startswith(PREFIX) and key[len(PREFIX) :] in ModelMetadata.__dataclass_fields__:
            values[key[len(PREFIX) :]] = json.loads(raw)
    return ModelMetadata(**values)
