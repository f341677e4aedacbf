"""``export_tflite``: tf_keras -> TFLite (float32, float16 weights, dynamic-range int8, full-integer int8)."""

from __future__ import annotations

import os
import time

from deploykit.atomic import atomic_path
from deploykit.errors import StepError, UsageError
from deploykit.export.artifact import ExportRecord, check_model_input, check_output_file, file_sizes
from deploykit.export.config import DEFAULT_NUM_CALIBRATION, ExportFormat, Precision, TfliteQuantization, parse_enum
from deploykit.export.convert import INPUT_NAME, OUTPUT_NAME
from deploykit.export.int8_prep import int8_source
from deploykit.export.runtimes import TfliteRunner
from deploykit.log import quiet_native


def export_tflite(
    model,
    path: str | os.PathLike,
    quantization: str | TfliteQuantization | None = None,
    representative_data=None,
    num_calibration: int = DEFAULT_NUM_CALIBRATION,
    int8_io: bool = False,
    *,
    seed: int = 42,
) -> ExportRecord:
    """Write ``model`` as a .tflite file to ``path`` (atomically) and return its :class:`ExportRecord`.

    ``quantization``: None / "none" (float32), "float16" (float16 weights),
    "dynamic" (int8 weights, float activations) or "int8" (full-integer:
    int8 weights and activations). "int8" needs ``representative_data`` (a
    Dataset, whose training split is sampled, or an array of inputs), of
    which ``num_calibration`` samples are used; given with "dynamic", they
    drive :func:`~deploykit.export.int8_prep.prepare_for_int8` too.
    ``int8_io`` makes the input and output tensors int8 (their scale and zero
    point are in the file and in the record). The signature's input is
    ``input`` and its output ``probabilities``, with a dynamic batch axis.
    """
    quant = parse_enum(TfliteQuantization, quantization, "TFLite quantization")
    path = check_output_file(path, ExportFormat.TFLITE)
    input_shape = check_model_input(model)
    if isinstance(num_calibration, bool) or not isinstance(num_calibration, int) or num_calibration < 1:
        raise UsageError(f"num_calibration must be a positive integer, got {num_calibration!r}")
    if int8_io and quant is not TfliteQuantization.INT8:
        raise UsageError(f"int8_io needs full-integer quantization ('int8'), not {quant.value!r}")
    if quant.needs_calibration and representative_data is None:
        raise UsageError("full-integer int8 TFLite needs representative_data (training inputs or a Dataset) to calibrate")
    start = time.perf_counter()
    source, calibration, prep = int8_source(model, representative_data, quant.precision is Precision.INT8,
                                            num_calibration, input_shape, seed)
    flat = _convert(source, input_shape, quant, calibration, int8_io)
    with atomic_path(path) as tmp:
        tmp.write_bytes(flat)
    seconds = time.perf_counter() - start
    io = TfliteRunner(path)
    size, gz = file_sizes(path)
    return ExportRecord(
        path=path, format=ExportFormat.TFLITE, quantization=quant.value, precision=quant.precision,
        size_bytes=size, gzip_bytes=gz, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        input_shape=list(input_shape), num_classes=int(io.output_shape[-1]), seconds=seconds,
        preparation=prep.steps if prep else [], calibration_samples=len(calibration) if calibration is not None else 0,
        input_dtype=io.input_dtype.name, input_quantization=io.input_quantization, output_quantization=io.output_quantization,
    )


def _convert(model, input_shape, quant: TfliteQuantization, calibration, int8_io: bool) -> bytes:
    from deploykit.backend import tf

    spec = tf.TensorSpec((None, *input_shape), tf.float32, name=INPUT_NAME)
    fn = tf.function(lambda x: {OUTPUT_NAME: model(x, training=False)}, input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], model)
    if quant is not TfliteQuantization.NONE:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant is TfliteQuantization.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    if quant is TfliteQuantization.INT8:
        converter.representative_dataset = lambda: ([row[None]] for row in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        with quiet_native():  # "fully_quantize: 0, ..." and I0000 lines from C++
            return converter.convert()
    except Exception as exc:  # the converter raises many types; all mean "this model did not convert"
        raise StepError(f"TFLite {quant.value} conversion failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
