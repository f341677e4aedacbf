"""Deep ensembles in one ONNX model: K member graphs side by side on one shared input.

Lakshminarayanan et al. (2017): K independently trained networks, averaged,
give better NLL and out-of-distribution detection than one network with MC
Dropout. Serving K files means K calls and K sessions; here the K exported
member graphs (float32, int8 QDQ or int8 dynamic, as deploykit writes them)
are copied into one graph, every name prefixed ``member{k}/`` except the
shared ``input``, their ``probabilities`` stacked to [K, N, C] and reduced to
the MC model's outputs (same names, dtypes, shapes and formulas: population
std, natural-log entropies, mutual information clipped at 0, argmax of the
mean). A logits classifier's members are stacked by their ``probabilities``
(the softmax each export computes in its graph); regression members (output
``prediction`` [N, K]) give ``mean`` and ``std`` per target over the members
and, optionally, ``member_predictions`` [K, N, K]. onnxruntime then runs the members in one call, and any client of the
MC model reads an ensemble the same way.

Members must share the task, the input shape, the number of classes (or targets) and the default-
domain opset (13..18); a member at another opset is converted with
``onnx.version_converter`` to ``opset`` when one is given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from deploykit.atomic import atomic_path
from deploykit.core.contract import ENSEMBLE_KEY as METADATA_KEY
from deploykit.core.contract import (
    INPUT_NAME,
    KIND_ENSEMBLE,
    MEMBER_PREDICTIONS_OUTPUT,
    MEMBERS_OUTPUT,
    OUTPUT_NAME,
    PREDICTION_NAME,
    SAMPLE_PREDICTIONS_OUTPUT,
    SAMPLES_OUTPUT,
    TASK_KEY,
    file_task,
)
from deploykit.core.task import OutputKind, Task
from deploykit.errors import ModelLoadError, UsageError
from deploykit.export.artifact import file_sizes
from deploykit.export.contract_onnx import check_model_outputs, output_info, width_sizes
from deploykit.export.metadata import read_metadata, write_metadata
from deploykit.onnx.builder import GraphBuilder, default_opset
from deploykit.onnx.graph_ops import empty_optionals, set_props
from deploykit.records import Record
from deploykit.uncertainty.mc_graph import reduce_samples

MEMBER_PREFIX = "member{k}/"  # every name of member k inside the ensemble graph


@dataclass
class EnsembleRecord(Record):
    """What ``build_ensemble_onnx`` wrote."""

    path: Path
    members: list[str]
    opset: int
    input_shape: list[int]
    num_classes: int  # a regression ensemble: its number of targets
    size_bytes: int
    member_bytes: list[int]
    task: Task = Task.CLASSIFICATION


def build_ensemble(members: Sequence, opset: int | None = None, include_members: bool = False):
    """One ``onnx.ModelProto`` evaluating every member (ModelProtos or paths) on the shared ``input``."""
    import onnx

    if len(members) < 2:
        raise UsageError(f"an ensemble needs at least 2 members, got {len(members)}")
    protos = [_load(m) for m in members]
    target = opset or max(default_opset(p) for p in protos)
    protos = [_at_opset(p, target, k) for k, p in enumerate(protos)]
    shape, classes, task, sampled = _check_alike(protos)
    graph = onnx.helper.make_graph([], "deep_ensemble", [_input_info(protos[0])], [])
    merged = onnx.helper.make_model(
        graph,
        opset_imports=_union_opsets(protos),
        producer_name="deploykit",
        ir_version=max(p.ir_version for p in protos),
    )
    outputs = []
    for k, proto in enumerate(protos):
        outputs.append(_add_member(merged.graph, proto, MEMBER_PREFIX.format(k=k), _member_output(proto)))
    ed = GraphBuilder.editing(merged, "ensemble")
    if not sampled:  # one [N, C] per member
        outputs = [ed.op("Unsqueeze", [o, ed.const([0], np.int64)]) for o in outputs]
    stacked = ed.op("Concat", outputs, axis=0)  # [K, N, C]; MC members: [K*T, N, C], member by member
    values = reduce_samples(ed, stacked, task)
    if include_members:
        values[_members_output(task, sampled)] = stacked
    _declare_outputs(ed, values, classes, task, sampled)
    merged.graph.doc_string = (
        f"Deep ensemble of {len(protos)} members on one input; outputs as deploykit's MC Dropout "
        + (
            "model (mean/std [N, C], predictive_entropy and mutual_information [N], predicted_class)."
            if task is Task.CLASSIFICATION
            else "regression model (mean/std [N, K] per target)."
        )
    )
    onnx.checker.check_model(merged, full_check=True)
    return merged


def export_ensemble_onnx(
    members: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    opset: int | None = None,
    *,
    include_members: bool = False,
    class_names: Sequence[str] | None = None,
) -> EnsembleRecord:
    """Write the ensemble of ONNX member files to ``path`` (atomically), with deploykit metadata.

    The metadata is the first member's (class names, steps, quantization) with
    kind ``deep_ensemble``; ``deploykit.ensemble`` lists the members.
    """
    import onnx

    proto = build_ensemble(members, opset, include_members)
    first = read_metadata(_load(members[0]))
    task = Task(file_task(None, [o.name for o in proto.graph.output]))
    names = list(class_names) if class_names is not None else first.class_names
    if task is Task.REGRESSION and names:
        raise UsageError(f"{len(names)} class names given, but the members are regressors")
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    classes = proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    meta = replace(
        first,
        kind=KIND_ENSEMBLE,
        class_names=names,
        input_shape=shape,
        steps=[*first.steps, f"ensemble({len(members)})"],
        default_samples=None,
        max_samples=None,
    )
    write_metadata(proto, meta)
    check_model_outputs(proto, KIND_ENSEMBLE, task, width_sizes(int(classes)), where="ensemble")
    kind = OutputKind.PROBABILITIES if task is Task.CLASSIFICATION else OutputKind.VALUES  # what `mean` averages
    set_props(
        proto,
        {
            METADATA_KEY: json.dumps({"members": [Path(m).name for m in members]}),
            TASK_KEY: json.dumps({"task": task.value, "output": kind.value}),
        },
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return EnsembleRecord(
        path,
        [str(m) for m in members],
        default_opset(proto),
        shape,
        int(classes),
        path.stat().st_size,
        [Path(m).stat().st_size for m in members],
        task,
    )


def _load(member):
    if hasattr(member, "graph"):
        return member
    path = Path(member)
    if not path.is_file():
        raise ModelLoadError(f"ensemble member {path}: no such file")
    from deploykit.onnx.file import load_onnx

    try:
        return load_onnx(path)  # external data contained in the member's folder, declared sizes bounded
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"ensemble member {path}: not an ONNX model ({type(exc).__name__})") from None


def _at_opset(proto, target: int, k: int):
    from onnx import version_converter

    if default_opset(proto) == target:
        return proto
    try:
        return version_converter.convert_version(proto, target)
    except Exception as exc:
        raise UsageError(
            f"ensemble member {k}: cannot convert opset {default_opset(proto)} to {target} "
            f"({type(exc).__name__}); export the members at one opset"
        ) from None


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _member_output(proto) -> str:
    """The output a member contributes: an MC Dropout member's samples (``sample_probabilities`` /
    ``sample_predictions``, [T, N, C]), else ``probabilities`` (a classifier, logits ones too) or ``prediction``."""
    names = [o.name for o in proto.graph.output]
    for name in (SAMPLES_OUTPUT, SAMPLE_PREDICTIONS_OUTPUT, OUTPUT_NAME):
        if name in names:
            return name
    return PREDICTION_NAME


def _members_output(task: Task, sampled: bool) -> str:
    """The optional output holding what was reduced: the members' outputs [K, N, C], or every sample [K*T, N, C]."""
    if sampled:
        return SAMPLES_OUTPUT if task is Task.CLASSIFICATION else SAMPLE_PREDICTIONS_OUTPUT
    return MEMBERS_OUTPUT if task is Task.CLASSIFICATION else MEMBER_PREDICTIONS_OUTPUT


def _check_alike(protos) -> tuple[list, int, Task, bool]:
    """Input shape, output width, task, and whether the members are MC Dropout models; all members must agree."""
    shapes, widths, tasks, sampled = set(), set(), set(), set()
    for k, p in enumerate(protos):
        names_in, names_out = [i.name for i in p.graph.input], [o.name for o in p.graph.output]
        output = _member_output(p)
        if INPUT_NAME not in names_in or output not in names_out:
            raise ModelLoadError(
                f"ensemble member {k}: needs input {INPUT_NAME!r} and output {OUTPUT_NAME!r} "
                f"(a classifier) or {PREDICTION_NAME!r} (a regressor) as deploykit exports them, "
                f"has inputs {names_in} and outputs {names_out}"
            )
        tasks.add(Task.CLASSIFICATION if output in (OUTPUT_NAME, SAMPLES_OUTPUT) else Task.REGRESSION)
        sampled.add(output in (SAMPLES_OUTPUT, SAMPLE_PREDICTIONS_OUTPUT))
        shapes.add(tuple(_dims(next(i for i in p.graph.input if i.name == INPUT_NAME))[1:]))
        widths.add(_dims(next(o for o in p.graph.output if o.name == output))[-1])
    if len(tasks) != 1:
        raise ModelLoadError("ensemble members differ: some are classifiers, some regressors")
    if len(sampled) != 1:
        raise ModelLoadError(
            "ensemble members differ: some are MC Dropout models (with their samples output), some "
            "deterministic; make every member one kind"
        )
    if len(shapes) != 1 or len(widths) != 1:
        raise ModelLoadError(
            f"ensemble members differ: input shapes {sorted(shapes)}, "
            f"{'classes' if tasks == {Task.CLASSIFICATION} else 'targets'} {sorted(widths, key=str)}"
        )
    return list(shapes.pop()), int(widths.pop()), tasks.pop(), sampled.pop()


def _input_info(proto):
    from onnx import TensorProto, helper

    dims = _dims(next(i for i in proto.graph.input if i.name == INPUT_NAME))
    return helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *dims[1:]])


def _union_opsets(protos) -> list:
    from onnx import helper

    versions: dict[str, int] = {}
    for p in protos:
        for o in p.opset_import:
            domain = "" if o.domain == "ai.onnx" else o.domain
            versions[domain] = max(versions.get(domain, 0), o.version)
    return [helper.make_opsetid(d, v) for d, v in sorted(versions.items())]


def member_outputs(proto) -> list[str]:
    """The members' probability tensors inside an ensemble graph, in member order: ``member{k}/probabilities``,
    or an MC Dropout member's ``member{k}/sample_probabilities``."""
    produced = {o for n in proto.graph.node for o in n.output}
    names: list[str] = []
    while True:
        prefix = MEMBER_PREFIX.format(k=len(names))
        name = next((prefix + o for o in (OUTPUT_NAME, SAMPLES_OUTPUT) if prefix + o in produced), None)
        if name is None:
            return names
        names.append(name)


def _add_member(graph, proto, prefix: str, output: str) -> str:
    """Copy a member into ``graph`` under ``prefix`` (its input rewired to the shared one); ``output``'s new name."""
    from onnx import compose

    member = compose.add_prefix(proto, prefix)
    inner = member.graph
    for node in inner.node:
        for i, name in enumerate(node.input):
            if name == prefix + INPUT_NAME:
                node.input[i] = INPUT_NAME
    graph.node.extend(empty_optionals(inner))  # an MC member's optional `samples`: its default T
    graph.node.extend(inner.node)
    graph.initializer.extend(inner.initializer)
    graph.sparse_initializer.extend(inner.sparse_initializer)
    graph.value_info.extend(v for v in inner.value_info if v.name != prefix + INPUT_NAME)
    return prefix + output


def _declare_outputs(ed: GraphBuilder, values: dict[str, str], width: int, task: Task, sampled: bool) -> None:
    """The ensemble's outputs as deploykit.core.contract.OUTPUTS declares them (MC members' samples: K*T of them)."""
    for name, tensor in values.items():
        ed.op("Identity", [tensor], output=name)
        ed.graph.output.append(output_info(name, task, KIND_ENSEMBLE, width, T="KT"))


# --- members through the pipeline ------------------------------------------------------------------


@dataclass
class EnsembleSizes(Record):
    """K pruned int8 members against one float32 original (bytes, and gzip -9 bytes)."""

    members: int
    members_bytes: int
    members_gzip: int
    ensemble_bytes: int
    ensemble_gzip: int
    original_bytes: int  # one float32 original (.keras as optimize saved it)
    original_gzip: int

    @property
    def gzip_ratio(self) -> float:
        """Ensemble gzip size / one original's: below 1 means the K members ship smaller than one float32 model."""
        return self.ensemble_gzip / self.original_gzip


def ensemble_sizes(members: Sequence[Path], ensemble: Path, original: Path) -> EnsembleSizes:
    members_sizes = [file_sizes(m) for m in members]
    return EnsembleSizes(
        len(members),
        sum(raw for raw, _ in members_sizes),
        sum(gz for _, gz in members_sizes),
        *file_sizes(ensemble),
        *file_sizes(original),
    )
