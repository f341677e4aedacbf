"""``export_mc_onnx``: a self-contained MC Dropout ONNX model with deploykit metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from deploykit.atomic import atomic_path
from deploykit.core.contract import KIND_MC_DROPOUT, TASK_KEY
from deploykit.core.graph import graph_from_model
from deploykit.core.task import OutputKind, Task
from deploykit.errors import UsageError
from deploykit.export.contract_onnx import check_model_outputs, width_sizes
from deploykit.export.convert import DEFAULT_OPSET
from deploykit.export.metadata import ModelMetadata, write_metadata
from deploykit.export.onnx_quant import quantize_int8_dynamic
from deploykit.io.keras3_api import keras3_boundary
from deploykit.onnx.graph_ops import set_props
from deploykit.records import Record
from deploykit.uncertainty.mc_graph import (
    DEFAULT_MAX_SAMPLES,
    DEFAULT_SAMPLES,
    MCConfig,
    build_mc_graph,
    check_has_dropout,
    dropout_layers,
    first_dropout_index,
    mc_task,
)

QUANTIZATIONS = (None, "int8-dynamic")


@dataclass
class MCExportRecord(Record):
    """What ``export_mc_onnx`` wrote."""

    path: Path
    config: MCConfig
    input_shape: list[int]
    num_classes: int  # 0 for a regressor
    dropout_layers: list[str]  # "name (Class, rate)"
    layers_run_once: int  # layers with no dropout upstream: evaluated once, not T times
    quantization: str
    size_bytes: int
    opset: int = DEFAULT_OPSET
    metadata: ModelMetadata = field(default_factory=ModelMetadata)
    task: Task = Task.CLASSIFICATION
    output_kind: OutputKind = OutputKind.PROBABILITIES  # what the model's last layer gives (logits: softmax per sample)
    num_targets: int = 0  # a regressor's outputs (mean / std columns); 0 for a classifier


def task_metadata(task: Task, kind: OutputKind) -> str:
    """The ``deploykit.task`` metadata value: what the model predicts and what its last layer outputs."""
    return json.dumps({"task": task.value, "output": kind.value})


def name_mc_inputs(proto, graph):
    """An MC graph of a packed model with one input per model input, named after it; its outputs stay packed."""
    from dataclasses import replace as _replace

    from deploykit.core.multi_io import Layout
    from deploykit.core.multi_io_model import graph_packing, name_onnx_tensors
    from deploykit.export.convert import INPUT_NAME

    packing = graph_packing(graph)
    if packing is None or not packing.packs_inputs:
        return proto
    inputs_only = _replace(packing, layout=Layout(packing.layout.inputs, ()))
    return name_onnx_tensors(proto, inputs_only, INPUT_NAME, "")


def output_columns(graph) -> dict[str, str]:
    """The ``deploykit.output_columns`` entry of an MC model of several outputs (none otherwise)."""
    import json

    from deploykit.core.contract import OUTPUT_COLUMNS_KEY
    from deploykit.core.multi_io_model import graph_packing

    packing = graph_packing(graph)
    if packing is None or not packing.packs_outputs:
        return {}
    layout = packing.layout
    return {
        OUTPUT_COLUMNS_KEY: json.dumps(
            {t.name: [layout.columns(t.name).start, layout.columns(t.name).stop] for t in layout.outputs}
        )
    }


@keras3_boundary
def export_mc_onnx(
    model,
    path: str | os.PathLike,
    samples: int = DEFAULT_SAMPLES,
    seed: int | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    include_samples: bool = False,
    *,
    config: MCConfig | None = None,
    class_names: Sequence[str] | None = None,
    quantization: str | None = None,
    calibration=None,
    metadata: ModelMetadata | None = None,
    opset: int = DEFAULT_OPSET,
) -> MCExportRecord:
    """Write the MC Dropout ONNX model of a dropout model (tf_keras or Keras 3) to ``path`` (atomically).

    ``samples`` is the default T (a client may feed ``samples`` per call, up to
    ``max_samples``). ``seed``: see :mod:`deploykit.uncertainty.mc_graph` (with
    a fixed seed every new session repeats the same sequence of outputs).
    ``quantization="int8-dynamic"`` quantizes the weights of the MC graph; with ``calibration`` (a
    Dataset or inputs) the model first goes through the int8 preparation every deploykit int8 export
    runs (:func:`~deploykit.export.int8_prep.prepare_for_int8`, folding no BatchNorm across a dropout),
    without which a folded input standardization can round most first-layer weights to zero.
    ``metadata`` (steps, sparsity, reference accuracy...) is extended with the
    MC fields. Nothing is written when an argument or the model is refused.
    ``config`` (an :class:`MCConfig`) gives ``samples``, ``seed``, ``max_samples`` and
    ``include_samples`` at once, instead of those arguments.
    """
    import onnx

    fields = MCConfig(samples=samples, max_samples=max_samples, seed=seed, include_samples=include_samples)
    if config is not None and fields != MCConfig():
        raise UsageError(
            "export_mc_onnx: give config= or its fields (samples, seed, max_samples, include_samples), not both"
        )
    config = config or fields
    if quantization not in QUANTIZATIONS:
        raise UsageError(f"quantization must be one of {', '.join(map(str, QUANTIZATIONS))}, got {quantization!r}")
    if quantization and calibration is not None:
        from deploykit.export.int8_prep import calibration_samples, prepare_for_int8

        samples_in = calibration_samples(calibration, 300, tuple(model.input_shape[1:]))
        model, _ = prepare_for_int8(model, samples_in, through_dropout=False)
    graph = graph_from_model(model, unsafe=True)  # a live model: its code loaded already; reading it runs none
    check_has_dropout(graph)
    task, kind = mc_task(graph, config.task)
    proto = build_mc_graph(graph, config, opset=opset)
    width = int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    num_classes = width if task is Task.CLASSIFICATION else 0
    if task is Task.REGRESSION and class_names:
        raise UsageError(f"{len(class_names)} class names given, but the model is a regressor ({width} targets)")
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise UsageError(f"{len(names)} class names given, but the model has {num_classes} classes")
    base = metadata or ModelMetadata()
    meta = replace(
        base,
        kind=KIND_MC_DROPOUT,
        class_names=names,
        input_shape=list(graph.input_shape),
        default_samples=config.samples,
        max_samples=config.max_samples,
        steps=[*base.steps, f"mc_dropout(samples={config.samples})", *([quantization] if quantization else [])],
        quantization=quantization or base.quantization,
    )
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    if quantization:
        proto = quantize_int8_dynamic(proto)  # MatMul weights to int8; the Dropout nodes stay
    proto = name_mc_inputs(proto, graph)  # several inputs (deploykit.core.multi_io): one named input each
    check_model_outputs(proto, KIND_MC_DROPOUT, task, width_sizes(width), where="MC export")  # before writing
    with atomic_path(path) as tmp:
        write_metadata(proto, meta)
        set_props(proto, {TASK_KEY: task_metadata(task, kind), **output_columns(graph)})
        onnx.save(proto, str(tmp))
    drops = dropout_layers(graph)
    return MCExportRecord(
        path=path,
        config=config,
        input_shape=list(graph.input_shape),
        num_classes=num_classes,
        dropout_layers=[f"{s.name} ({s.class_name}, {float(s.config.get('rate', 0.0)):g})" for s in drops],
        layers_run_once=first_dropout_index(graph),
        quantization=quantization or "float32",
        size_bytes=path.stat().st_size,
        opset=opset,
        metadata=meta,
        task=task,
        output_kind=kind,
        num_targets=width - num_classes,
    )
