"""``export_onnx``: tf_keras -> ONNX (tf2onnx) in any ONNX variant, and ``quantize_onnx_file`` for an existing file."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from deploykit.atomic import atomic_path
from deploykit.core.contract import main_output
from deploykit.core.multi_io_model import name_onnx_tensors, packing_of
from deploykit.core.task import Task, model_task
from deploykit.errors import UsageError
from deploykit.export.artifact import ExportRecord, check_model_input, check_output_file, dense_sparsity, file_sizes
from deploykit.export.config import (
    ExportFormat,
    Precision,
    QuantConfig,
    Quantization,
    Recipe,
    parse_enum,
)
from deploykit.export.conversions import onnx_conversion
from deploykit.export.convert import DEFAULT_OPSET, INPUT_NAME, add_probabilities
from deploykit.export.int8_prep import (
    STANDARDIZATION,
    STANDARDIZED,
    Int8Preparation,
    calibration_samples,
    variant_source,
)
from deploykit.export.metadata import KIND_DETERMINISTIC, ModelMetadata, read_metadata, write_metadata
from deploykit.export.onnx_quant import (
    fixed_inputs,
    input_layout,
    quantize_float16,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from deploykit.io.inputs import as_calibration, as_model
from deploykit.onnx.builder import MAX_OPSET, MIN_OPSET


def export_onnx(
    model,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    quantization: str | Quantization | None = None,
    calibration_data=None,
    metadata: ModelMetadata | None = None,
    *,
    config: QuantConfig | None = None,
    num_calibration: int | None = None,
    seed: int | None = None,
    task: Task | None = None,
) -> ExportRecord:
    """Write ``model`` as ONNX to ``path`` (atomically) and return its :class:`ExportRecord`.

    ``model``: a Keras model (tf_keras or Keras 3) or a model file. The graph
    has input ``input`` (float32, dynamic batch) and, in every variant, the outputs of
    the model's output kind: ``probabilities``; ``logits`` and ``probabilities``
    (softmax in the graph); or a regressor's ``prediction``. ``task`` (else
    ``metadata.task``, else read off the model: see :func:`deploykit.core.task.resolve_task`)
    decides between logits and regression for a linear output, and is stored as
    ``deploykit.task``. ``quantization``: an ONNX variant of
    :class:`~deploykit.export.config.Quantization` ("float32", "float16",
    "int8-dynamic", "int8-static"). ``calibration_data`` (a Dataset, whose
    training split is sampled, a data path, ``(x, y)`` or an array of inputs)
    is required by "int8-static"; given with an int8 variant it also drives
    :func:`~deploykit.export.int8_prep.prepare_for_int8`. ``config`` holds the
    int8 knobs (per-channel, calibration method and size, excluded nodes);
    ``num_calibration`` and ``seed`` override its fields. ``metadata`` is
    completed with what this export knows and stored in ``metadata_props``.
    """
    import onnx

    quant = _onnx_variant(quantization)
    knobs = _knobs(config, num_calibration, seed).for_variant(quant)
    path = check_output_file(path, ExportFormat.ONNX)
    _check_opset(opset)
    model = as_model(model)
    input_shape = check_model_input(model)
    if quant.needs_calibration and calibration_data is None:
        raise UsageError(f"ONNX {quant.value} quantization needs calibration_data (training inputs or a Dataset)")
    start = time.perf_counter()
    given = task if task is not None else (metadata.task_and_output()[0] if metadata and metadata.task else None)
    task, kind = model_task(model, task=given)
    source, calibration, prep = variant_source(model, as_calibration(calibration_data), quant, knobs, input_shape)
    converted = onnx_conversion(source, opset, kind)  # once per model: each variant edits its own copy
    proto = quantize_proto(converted, quant, calibration, knobs)
    num_classes = _main_width(proto)
    proto = name_onnx_tensors(proto, packing_of(model), INPUT_NAME, main_output([o.name for o in proto.graph.output]))
    meta = _complete_metadata(metadata, model, input_shape, num_classes, quant, prep, opset)
    meta = dataclasses.replace(
        meta,
        task=ModelMetadata.task_entry(task, kind),
        class_names=meta.class_names if task is Task.CLASSIFICATION else [],
    )
    write_metadata(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return _record(
        path,
        quant,
        input_shape,
        num_classes,
        time.perf_counter() - start,
        prep,
        calibration,
        opset,
        meta,
        [o.name for o in proto.graph.output],
    )


def quantize_onnx_file(
    source: str | os.PathLike,
    path: str | os.PathLike,
    quantization: str | Quantization,
    calibration_data=None,
    *,
    config: QuantConfig | None = None,
    metadata: ModelMetadata | None = None,
) -> ExportRecord:
    """Quantize an existing float32 ONNX file into ``path`` ("float16", "int8-dynamic", "int8-static"...).

    What ``deploykit export model.onnx --quantize ...`` runs: onnxruntime's quantizers, on the file as
    :func:`~deploykit.export.onnx_int8_prep.prepare_onnx_for_int8` prepares it for an int8 variant given
    ``calibration_data`` (weight clip search and bias correction; with ``config.standardize_input``, a float
    standardization of the first Gemm / MatMul's input). The deploykit metadata the file carries is kept and
    completed: ``metadata`` (what the caller resolved: the task, the class names) fills in what the file's own
    does not say (a converter's file has none), so the quantized file is served as what it is.
    """
    import onnx

    quant = _onnx_variant(quantization)
    knobs = (config or QuantConfig()).for_variant(quant)
    source, path = Path(source), check_output_file(path, ExportFormat.ONNX)
    if source.suffix.lower() != ".onnx" or not source.is_file():
        raise UsageError(f"{source}: not an .onnx file")
    if source.resolve() == path.resolve():
        raise UsageError(f"{path}: the quantized model must not overwrite its source")
    from deploykit.onnx.file import load_onnx

    proto = load_onnx(source)  # external data contained in the source's folder, declared sizes bounded
    name, input_shape, single = _input_of(source, proto)
    if quant.needs_calibration and calibration_data is None:
        raise UsageError(f"ONNX {quant.value} quantization needs calibration data (--data)")
    start = time.perf_counter()
    calibration, prep, in_float = None, None, ()
    # a calibrated variant samples its data; an int8 one given data is prepared too
    if quant.needs_calibration or (quant.precision is Precision.INT8 and calibration_data is not None):
        calibration = calibration_samples(
            as_calibration(calibration_data), knobs.num_calibration, input_shape, knobs.seed
        )
    own = read_metadata(proto)
    base = _completed(own, metadata)
    if own.task is None and base.task is not None:  # a converter's classifier: the probabilities it is served by
        add_probabilities(proto, base.task_and_output()[1])
    if calibration is not None:
        from deploykit.export.onnx_int8_prep import prepare_onnx_for_int8

        proto, prep, in_float = prepare_onnx_for_int8(  # the standardization is of the one input a model has
            proto, calibration, standardize=knobs.standardize_input and single, exact=knobs.standardize_exact
        )
        if not prep.steps or prep.steps[0] != STANDARDIZED:  # none put in: the name would select nothing
            knobs = dataclasses.replace(knobs, exclude=tuple(n for n in knobs.exclude if n != STANDARDIZATION))
    proto = quantize_proto(proto, quant, calibration, knobs, keep_float=in_float)
    steps = [*base.steps, *(prep.steps if prep else []), quant.value]
    meta = dataclasses.replace(base, quantization=quant.value, steps=steps, input_shape=list(input_shape))
    write_metadata(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    outputs = [o.name for o in proto.graph.output]
    num_classes = _main_width(proto)
    record = _record(
        path, quant, input_shape, num_classes, time.perf_counter() - start, prep, calibration, None, meta, outputs
    )
    return dataclasses.replace(record, input_name=name)


def _completed(own: ModelMetadata, given: ModelMetadata | None) -> ModelMetadata:
    """The file's own metadata, its empty task / class names / reference accuracy taken from ``given``."""
    if given is None:
        return own
    return dataclasses.replace(
        own,
        task=own.task or given.task,
        class_names=own.class_names or list(given.class_names),
        reference_accuracy=own.reference_accuracy if own.reference_accuracy is not None else given.reference_accuracy,
    )


def _input_of(source: Path, proto) -> tuple[str, tuple[int, ...], bool]:
    """(first input's name, the per-sample shape data rows have, one input?): several inputs are read as one packed
    row ([D], every input flattened side by side in name order: :func:`~deploykit.export.onnx_quant.input_layout`)."""
    try:
        inputs = fixed_inputs(proto)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    name = next(iter(inputs))
    if len(inputs) == 1:
        return name, inputs[name], True
    _one_batch_axis(proto, list(inputs))
    return name, (input_layout(proto).input_size,), False


def _one_batch_axis(proto, names: list[str]) -> None:
    """Name the batch axis of every input alike (the first one's name, else ``N``): rows of the several inputs are
    one batch, and a converter that named them apart (tf2onnx: ``unk__6``, ``unk__7``) leaves onnxruntime's
    symbolic shape inference unable to join them where the inputs meet (``Incomplete symbolic shape inference``
    from the int8-static pre-processing)."""
    dims = [next(v for v in proto.graph.input if v.name == n).type.tensor_type.shape.dim[0] for n in names]
    batch = next((d.dim_param for d in dims if d.dim_param), "N")
    for d in dims:
        if not d.HasField("dim_value"):
            d.dim_param = batch


def quantize_proto(
    proto, quant: Quantization, calibration: np.ndarray | None, knobs: QuantConfig, keep_float: tuple[str, ...] = ()
):
    """``proto`` in variant ``quant``: the one dispatch from a variant's recipe to onnxruntime's tools.
    ``keep_float``: node names an int8 variant leaves in float where the graph still has them (the ONNX
    preparation's float standardization and the ops before it)."""
    recipe = quant.spec.recipe
    if recipe is Recipe.FLOAT:
        return proto
    if recipe is Recipe.FLOAT16:
        return quantize_float16(proto)
    if recipe is Recipe.ONNX_DYNAMIC:
        return quantize_int8_dynamic(proto, per_channel=knobs.per_channel, exclude=knobs.exclude, keep_float=keep_float)
    if recipe is Recipe.ONNX_STATIC:
        return quantize_int8_static(
            proto,
            calibration,
            per_channel=knobs.per_channel,
            method=knobs.calibration_method,
            exclude=knobs.exclude,
            activation_type=knobs.activation_type,
            keep_float=keep_float,
        )
    raise UsageError(f"ONNX export has no recipe {recipe.value!r}")  # a VARIANTS row naming a TFLite recipe


def _onnx_variant(quantization) -> Quantization:
    quant = parse_enum(Quantization, quantization, "ONNX quantization")
    if ExportFormat.ONNX not in quant.formats:
        raise UsageError(
            f"{quant.value!r} is not an ONNX variant; choose from "
            + ", ".join(repr(q.value) for q in Quantization if ExportFormat.ONNX in q.formats)
        )
    return quant


def _knobs(config: QuantConfig | None, num_calibration: int | None, seed: int | None) -> QuantConfig:
    """``config`` (or the defaults) with the keyword shortcuts applied (validated by QuantConfig)."""
    knobs = config or QuantConfig()
    overrides = {k: v for k, v in (("num_calibration", num_calibration), ("seed", seed)) if v is not None}
    if not overrides:
        return knobs
    try:
        return dataclasses.replace(knobs, **overrides)
    except Exception as exc:
        raise UsageError(str(exc)) from None


def _check_opset(opset) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")


def _record(
    path: Path,
    quant: Quantization,
    input_shape,
    num_classes: int,
    seconds: float,
    prep: Int8Preparation | None,
    calibration,
    opset: int | None,
    meta: ModelMetadata,
    outputs: list[str],
) -> ExportRecord:
    size, gz = file_sizes(path)
    return ExportRecord(
        path=path,
        format=ExportFormat.ONNX,
        quantization=quant,
        precision=quant.precision,
        size_bytes=size,
        gzip_bytes=gz,
        input_name=INPUT_NAME,
        output_name=main_output(outputs),
        input_shape=list(input_shape),
        num_classes=num_classes,
        seconds=seconds,
        preparation=prep.steps if prep else [],
        calibration_samples=len(calibration) if calibration is not None else 0,
        opset=opset,
        metadata=meta,
    )


def _complete_metadata(
    base: ModelMetadata | None,
    model,
    input_shape,
    num_classes: int,
    quant: Quantization,
    prep: Int8Preparation | None,
    opset: int,
) -> ModelMetadata:
    """``base`` (or an empty one) with the facts of this export filled in."""
    base = base or ModelMetadata()
    names = [str(c) for c in base.class_names] or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise UsageError(f"metadata names {len(names)} classes, but the model has {num_classes} outputs")
    steps = [*base.steps, *(prep.steps if prep else []), f"onnx(opset={opset})"]
    if quant is not Quantization.FLOAT32:
        steps.append(quant.value)
    return dataclasses.replace(
        base,
        kind=KIND_DETERMINISTIC,
        class_names=names,
        input_shape=list(input_shape),
        steps=steps,
        quantization=quant.value,
        sparsity=round(dense_sparsity(model), 6),
    )


def _main_width(proto) -> int:
    """The last-axis width of the graph's main output (probabilities, else the prediction): classes or targets."""
    outputs = {o.name: o for o in proto.graph.output}
    return int(outputs[main_output(outputs)].type.tensor_type.shape.dim[-1].dim_value)
