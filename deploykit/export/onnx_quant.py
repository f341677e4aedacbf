"""ONNX quantization with onnxruntime's own tools: float16, dynamic int8, static int8 (QDQ).

Each function takes and returns an ``onnx.ModelProto``; onnxruntime's
quantizers work on files, so they run in a scratch folder that is removed
afterwards. Inputs and outputs stay float32 in every variant.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from deploykit.export.convert import INPUT_NAME
from deploykit.log import quiet_native


def quantize_float16(proto):
    """float16 weights and arithmetic; the float32 input and output get Cast nodes (keep_io_types)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
    wrapped = OnnxModel(half)
    wrapped.topological_sort()  # the converter appends the input Casts last; onnx.checker wants them first
    return wrapped.model


def quantize_int8_dynamic(proto):
    """int8 weights (symmetric, per output channel); activations are quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _scratch(proto) as (src, dst), quiet_native():  # the quantizer warns on the root logger ("consider pre-processing")
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        return _load(dst)


def quantize_int8_static(proto, calibration: np.ndarray):
    """QDQ int8 weights (per output channel) and activations, ranges calibrated on ``calibration``.

    Runs ``quant_pre_process`` (shape inference and graph optimisation) first,
    as onnxruntime recommends.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _scratch(proto) as (src, dst), quiet_native():  # the quantizer warns on the root logger ("consider pre-processing")
        pre = src.with_name("pre.onnx")
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre), str(dst), _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )
        return _load(dst)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, one sample per call."""

    def __init__(self, x: np.ndarray):
        self._rows = iter(np.asarray(x, dtype=np.float32))

    def get_next(self):
        row = next(self._rows, None)
        return None if row is None else {INPUT_NAME: row[None]}


@contextlib.contextmanager
def _scratch(proto) -> Iterator[tuple[Path, Path]]:
    """A temporary folder holding ``src.onnx`` (the input model); yields (src, dst)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="deploykit-quant-") as tmp:
        root = Path(tmp)
        onnx.save(proto, str(root / "src.onnx"))
        yield root / "src.onnx", root / "dst.onnx"


def _load(path: Path):
    import onnx

    return onnx.load(str(path))
