"""``export_tflite``: a Keras model -> TFLite in any TFLite variant (float32, float16, int8-weights, int8-full)."""

from __future__ import annotations

import dataclasses
import os
import time

from deploykit.atomic import atomic_path
from deploykit.core.task import OutputKind, Task, model_task
from deploykit.errors import ConversionError, UsageError, one_line
from deploykit.export.artifact import ExportRecord, check_model_input, check_output_file, file_sizes
from deploykit.export.config import (
    CalibrationMethod,
    ExportFormat,
    QuantConfig,
    Quantization,
    Recipe,
    parse_enum,
)
from deploykit.export.conversions import Signature, tflite_signature
from deploykit.export.convert import INPUT_NAME
from deploykit.export.int8_prep import variant_source
from deploykit.export.runtimes import TfliteRunner, tflite_outputs
from deploykit.export.tflite_saved import lowered, variables_only  # noqa: F401  (re-exported)
from deploykit.io.inputs import as_calibration, as_model
from deploykit.log import quiet_native


def export_tflite(
    model,
    path: str | os.PathLike,
    quantization: str | Quantization | None = None,
    representative_data=None,
    *,
    config: QuantConfig | None = None,
    num_calibration: int | None = None,
    int8_io: bool | None = None,
    seed: int | None = None,
    task: Task | None = None,
    tune=None,
) -> ExportRecord:
    """Write ``model`` as a .tflite file to ``path`` (atomically) and return its :class:`ExportRecord`.

    ``model``: a Keras model (tf_keras or Keras 3) or a model file.
    ``quantization``: a TFLite variant of :class:`~deploykit.export.config.Quantization`:
    "float32", "float16" (float16 weights), "int8-weights" (dynamic range:
    int8 weights, float activations) or "int8-full" (int8 weights and
    activations). "int8-full" needs ``representative_data`` (a Dataset, a data
    path, ``(x, y)`` or an array of inputs); given with "int8-weights" it
    drives :func:`~deploykit.export.int8_prep.prepare_for_int8` too.
    ``config`` holds the int8 knobs: per-channel, calibration size, ``exclude``
    (Keras layers left in float in "int8-full", via the converter's selective
    quantization) and ``int8_io`` (int8 input and output tensors, their scale
    and zero point in the file and in the record); ``num_calibration``,
    ``int8_io`` and ``seed`` override its fields. The signature's input is
    ``input`` and its outputs those of the ONNX export, with a dynamic batch axis:
    ``probabilities``; ``logits`` and ``probabilities`` (the softmax in the graph: the
    converter takes the second output in every variant); or ``prediction``. ``task``
    decides between logits and regression for a linear output (see :func:`deploykit.core.task.resolve_task`).
    ``tune`` (an int8 variant): ``tune(prepared) -> (model, step)`` replaces the int8 preparation's model before
    conversion, its step named among the record's preparation (the quantization-aware fine-tune,
    :mod:`deploykit.export.qat`).
    """
    quant = parse_enum(Quantization, quantization, "TFLite quantization")
    if ExportFormat.TFLITE not in quant.formats:
        raise UsageError(
            f"{quant.value!r} is not a TFLite variant; choose from "
            + ", ".join(repr(q.value) for q in Quantization if ExportFormat.TFLITE in q.formats)
        )
    knobs = _knobs(config, num_calibration, int8_io, seed).for_variant(quant)
    path = check_output_file(path, ExportFormat.TFLITE)
    model = as_model(model)
    input_shape = check_model_input(model)
    if knobs.int8_io and quant.spec.recipe is not Recipe.TFLITE_FULL:
        raise UsageError(f"int8_io needs full-integer quantization ('int8-full'), not {quant.value!r}")
    if quant.spec.recipe is Recipe.TFLITE_FULL and knobs.calibration_method is not CalibrationMethod.MINMAX:
        raise UsageError(f"TFLite's converter calibrates with min/max only, not {knobs.calibration_method.value!r}")
    if quant.needs_calibration and representative_data is None:
        raise UsageError(
            "full-integer int8 TFLite needs representative_data (training inputs or a Dataset) to calibrate"
        )
    start = time.perf_counter()
    _, kind = model_task(model, task=task)
    source, calibration, prep = variant_source(model, as_calibration(representative_data), quant, knobs, input_shape)
    if tune is not None and prep is not None:
        source, step = tune(source)
        prep.steps.append(step)
    with tflite_signature(source, input_shape, kind) as signature:  # once per model
        flat = _convert(signature, quant, calibration, knobs)
    _check_outputs(flat, model, kind)  # before anything is written
    with atomic_path(path) as tmp:
        tmp.write_bytes(flat)
    seconds = time.perf_counter() - start
    io = TfliteRunner(path)
    size, gz = file_sizes(path)
    return ExportRecord(
        path=path,
        format=ExportFormat.TFLITE,
        quantization=quant,
        precision=quant.precision,
        size_bytes=size,
        gzip_bytes=gz,
        input_name=INPUT_NAME,
        output_name=io.output_name,
        input_shape=list(input_shape),
        num_classes=int(io.output_shape[-1]),
        seconds=seconds,
        preparation=prep.steps if prep else [],
        calibration_samples=len(calibration) if calibration is not None else 0,
        input_dtype=io.input_dtype.name,
        input_quantization=io.input_quantization,
        output_quantization=io.output_quantization,
    )


def _knobs(config: QuantConfig | None, num_calibration, int8_io, seed) -> QuantConfig:
    knobs = config or QuantConfig()
    overrides = {
        k: v for k, v in (("num_calibration", num_calibration), ("int8_io", int8_io), ("seed", seed)) if v is not None
    }
    try:
        return dataclasses.replace(knobs, **overrides) if overrides else knobs
    except Exception as exc:  # QuantConfig's ConfigError, as a usage error of this call
        raise UsageError(str(exc)) from None


def _convert(signature: Signature, quant: Quantization, calibration, knobs: QuantConfig) -> bytes:
    """One TFLite variant converted from ``signature`` (:func:`~deploykit.export.conversions.tflite_signature`)."""
    from deploykit.backend import tf
    from deploykit.core.multi_io_model import packing_of, representative_rows

    model = signature.model
    converter = tf.lite.TFLiteConverter.from_concrete_functions([signature.function], signature.module)
    if signature.folder is not None:
        lowered(converter, signature.folder)
    recipe = quant.spec.recipe
    packing = packing_of(model)
    if recipe is not Recipe.FLOAT:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe is Recipe.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    converter._experimental_disable_per_channel = not knobs.per_channel  # the converter's own per-tensor switch
    if recipe is Recipe.TFLITE_FULL:
        converter.representative_dataset = representative_rows(packing, calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if knobs.int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        with quiet_native():  # "fully_quantize: 0, ..." and I0000 lines from C++
            if knobs.exclude or (recipe is Recipe.TFLITE_FULL and not knobs.int8_io):
                return _selective(converter, model, calibration, knobs.exclude, knobs.int8_io)
            return converter.convert()
    except UsageError:
        raise
    except Exception as exc:  # the converter raises many types; all mean "this model did not convert"
        raise ConversionError(f"TFLite {quant.value} conversion failed: {one_line(exc)}") from exc


def _check_outputs(flat: bytes, model, kind: OutputKind) -> None:
    """The converted signature's outputs against deploykit.core.contract.OUTPUTS (names of the output kind, dtypes,
    shapes); a model of several named outputs (deploykit.core.multi_io) names its own, only their types are checked."""
    from ai_edge_litert.interpreter import Interpreter

    from deploykit.core.contract import KIND_DETERMINISTIC, check_outputs
    from deploykit.core.multi_io_model import packing_of
    from deploykit.core.taskspec import spec_of
    from deploykit.export.contract_onnx import width_sizes

    spec = spec_of(kind)
    width = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    sizes = width_sizes(width, spec.classes(width) if isinstance(width, int) else None)
    found = tflite_outputs(Interpreter(model_content=flat))
    single = packing_of(model) is None
    check_outputs("TFLite export", found, KIND_DETERMINISTIC, spec.task, sizes, output_kind=kind, required=single)


def _selective(converter, model, calibration, exclude: tuple[str, ...], int8_io: bool) -> bytes:
    """Full-integer conversion with the ops of the ``exclude`` layers left in float, and, with float outputs, the
    output head after the last weighted op (softmax, sigmoid) in float too.

    The converter's own selective quantization, as TFLite's QuantizationDebugger
    runs it: calibrate only, then quantize with those ops' output tensors
    denylisted (tf2 converters name an op's output after the layers fused into it).
    Why the head: an int8 softmax output has fixed steps of 1/256, so every probability below 1/512 becomes
    exactly 0 and one confident mistake costs the test NLL dearly (+47% on a Fashion network); its logits stay
    int8 (their own scale), only the softmax and what follows run in float, which costs no weights.
    """
    from tensorflow.lite.python import convert

    from deploykit.backend import tf

    layers = {layer.name for layer in model.layers}
    unknown = [name for name in exclude if name not in layers]
    if unknown:
        raise UsageError(f"exclude: no Keras layer named {unknown[0]!r} (layers: {', '.join(sorted(layers))})")
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.inference_input_type = converter.inference_output_type = tf.float32  # set by mlir_quantize below
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    denylisted = [t for t in _tensor_names(calibrated) if set(exclude) & set(t.replace(";", "/").split("/"))]
    if not int8_io:
        denylisted += [t for t in float_head(calibrated) if t not in denylisted]
    io = tf.int8 if int8_io else tf.float32
    # float input and output unless int8 ones are asked for: a fully quantized graph would quantize the raw input
    # to int8 before an excluded first layer (the float input standardization of raw tabular features, int8_prep)
    return _repacked(
        convert.mlir_quantize(
            calibrated,
            disable_per_channel=converter._experimental_disable_per_channel,
            fully_quantize=int8_io,
            input_data_type=io,
            output_data_type=io,
            denylisted_nodes=denylisted,
        )
    )


def _repacked(flat: bytes) -> bytes:
    """The same model serialized again in the flatbuffer's canonical order (the converter's own output order).

    ``mlir_quantize`` writes the small buffers ahead of the large kernels: the same bytes, but gzip, whose
    window is 32 KiB, then finds fewer repeats across them (a 95%-sparse Fashion network's int8 file: 36.3
    KiB gzip instead of 34.6). Repacking through the schema's object API restores the order; the tensors,
    buffers, signatures and metadata are unchanged.
    """
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flat, 0))
    builder = flatbuffers.Builder(len(flat) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tensor_names(flat: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return [t["name"] for t in Interpreter(model_content=flat).get_tensor_details()]


#: Ops that carry weights (and end a model's output head walked backwards): everything after the last one of these
#: on the way to an output is the head's activation and bookkeeping (softmax, sigmoid, 1 - p, concatenation).
_WEIGHTED_OPS = frozenset(
    {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV", "BATCH_MATMUL", "EMBEDDING_LOOKUP"}
)


def float_head(flat: bytes) -> list[str]:
    """The output tensor names of the ops between the last weighted op and each signature output: the ones left
    in float so the served probabilities are not rounded to int8 steps (see :func:`_selective`)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flat)
    ops = getattr(interpreter, "_get_ops_details", None)  # LiteRT's op listing (what its model analyzer uses)
    if ops is None:  # a LiteRT without it: the head is quantized as before, the NLL check still measures it
        return []
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    producer = {out: op for op in ops() for out in op["outputs"]}
    todo = [t["index"] for t in interpreter.get_output_details()]
    head: list[str] = []
    while todo:
        op = producer.get(todo.pop())
        if op is None or op["op_name"] in _WEIGHTED_OPS or tensors[op["outputs"][0]] in head:
            continue
        head += [tensors[i] for i in op["outputs"]]
        todo += [i for i in op["inputs"] if i >= 0 and i in producer]
    return head
