"""``export_onnx``: tf_keras -> ONNX (tf2onnx), optionally float16 / int8, with deploykit metadata."""

from __future__ import annotations

import dataclasses
import functools
import os
import time

from deploykit.atomic import atomic_path
from deploykit.errors import UsageError
from deploykit.export.artifact import ExportRecord, check_model_input, check_output_file, dense_sparsity, file_sizes
from deploykit.export.config import (
    DEFAULT_NUM_CALIBRATION,
    MAX_OPSET,
    MIN_OPSET,
    ExportFormat,
    OnnxQuantization,
    Precision,
    parse_enum,
)
from deploykit.export.convert import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, keras_to_onnx
from deploykit.export.int8_prep import Int8Preparation, int8_source
from deploykit.export.metadata import KIND_DETERMINISTIC, ModelMetadata, write_metadata
from deploykit.export.onnx_quant import quantize_float16, quantize_int8_dynamic, quantize_int8_static


def export_onnx(
    model,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    quantization: str | OnnxQuantization | None = None,
    calibration_data=None,
    metadata: ModelMetadata | None = None,
    *,
    num_calibration: int = DEFAULT_NUM_CALIBRATION,
    seed: int = 42,
) -> ExportRecord:
    """Write ``model`` as ONNX to ``path`` (atomically) and return its :class:`ExportRecord`.

    The graph has input ``input`` (float32, dynamic batch) and output
    ``probabilities`` in every variant. ``quantization``: None / "none",
    "float16", "int8-dynamic" or "int8-static". ``calibration_data`` (a
    Dataset, whose training split is sampled, or an array of inputs) is
    required by "int8-static"; given with an int8 variant, ``num_calibration``
    samples of it also drive :func:`~deploykit.export.int8_prep.prepare_for_int8`.
    ``metadata`` (steps, class names, reference accuracy...) is completed with
    what this export knows and stored in ``metadata_props``.
    """
    import onnx

    quant = parse_enum(OnnxQuantization, quantization, "ONNX quantization")
    path = check_output_file(path, ExportFormat.ONNX)
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
    input_shape = check_model_input(model)
    if quant.needs_calibration and calibration_data is None:
        raise UsageError(f"ONNX {quant.value} quantization needs calibration_data (training inputs or a Dataset)")
    start = time.perf_counter()
    source, calibration, prep = int8_source(model, calibration_data, quant.precision is Precision.INT8,
                                            num_calibration, input_shape, seed)
    proto = keras_to_onnx(source, opset=opset)
    quantize = {
        OnnxQuantization.NONE: None,
        OnnxQuantization.FLOAT16: quantize_float16,
        OnnxQuantization.INT8_DYNAMIC: quantize_int8_dynamic,
        OnnxQuantization.INT8_STATIC: functools.partial(quantize_int8_static, calibration=calibration),
    }[quant]
    if quantize is not None:
        proto = quantize(proto)
    num_classes = int(proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value)
    meta = _complete_metadata(metadata, model, input_shape, num_classes, quant, prep, opset)
    write_metadata(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    size, gz = file_sizes(path)
    return ExportRecord(
        path=path, format=ExportFormat.ONNX, quantization=quant.value, precision=quant.precision,
        size_bytes=size, gzip_bytes=gz, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        input_shape=list(input_shape), num_classes=num_classes, seconds=time.perf_counter() - start,
        preparation=prep.steps if prep else [], calibration_samples=len(calibration) if calibration is not None else 0,
        opset=opset, metadata=meta,
    )


def _complete_metadata(base: ModelMetadata | None, model, input_shape, num_classes: int, quant: OnnxQuantization,
                       prep: Int8Preparation | None, opset: int) -> ModelMetadata:
    """``base`` (or an empty one) with the facts of this export filled in."""
    base = base or ModelMetadata()
    names = [str(c) for c in base.class_names] or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise UsageError(f"metadata names {len(names)} classes, but the model has {num_classes} outputs")
    steps = [*base.steps, *(prep.steps if prep else []), f"onnx(opset={opset})"]
    if quant is not OnnxQuantization.NONE:
        steps.append(quant.value)
    return dataclasses.replace(
        base, kind=KIND_DETERMINISTIC, class_names=names, input_shape=list(input_shape), steps=steps,
        quantization=quant.value, sparsity=round(dense_sparsity(model), 6),
    )
