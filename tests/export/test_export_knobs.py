"""The int8 knobs (QuantConfig) onnxruntime and TFLite users expect, each checked in the artifact it produces."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import UsageError
from deploykit.export import QuantConfig, Quantization, export_onnx, export_tflite, export_variant, validate

pytestmark = pytest.mark.slow  # each test converts and quantizes real models


def _dense_names(model) -> list[str]:
    return [layer.name for layer in model.layers if type(layer).__name__ == "Dense"]


def _weight_scales(path) -> list[tuple[int, ...]]:
    """Shapes of the scales of every DequantizeLinear that dequantizes an int8 initializer (a weight)."""
    import onnx

    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    return [
        tuple(inits[n.input[1]].dims)
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
    ]


def test_per_channel_and_per_tensor_static_int8(tmp_path, trained_model, digits):
    channel = export_onnx(trained_model, tmp_path / "c.onnx", quantization="int8-static", calibration_data=digits)
    tensor = export_onnx(
        trained_model,
        tmp_path / "t.onnx",
        quantization="int8-static",
        calibration_data=digits,
        config=QuantConfig(per_channel=False),
    )
    assert any(shape and shape[0] > 1 for shape in _weight_scales(channel.path))  # one scale per output channel
    assert _weight_scales(tensor.path) and all(int(np.prod(shape)) == 1 for shape in _weight_scales(tensor.path))
    assert validate(tensor, digits, trained_model, repeats=2).passed


def test_the_per_tensor_variant_fixes_its_knob(tmp_path, trained_model, digits):
    """int8-static-per-tensor is int8-static with per_channel fixed off, whatever the config says."""
    record = export_variant(
        trained_model,
        "onnx",
        "int8-static-per-tensor",
        tmp_path / "v.onnx",
        digits,
        config=QuantConfig(per_channel=True),
    )
    assert record.quantization is Quantization.INT8_STATIC_PER_TENSOR
    assert _weight_scales(record.path) and all(int(np.prod(s)) == 1 for s in _weight_scales(record.path))
    assert validate(record, digits, trained_model, repeats=2).passed


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods_give_valid_int8(tmp_path, trained_model, digits, method, capsys):
    record = export_onnx(
        trained_model,
        tmp_path / f"{method}.onnx",
        quantization="int8-static",
        calibration_data=digits,
        config=QuantConfig(calibration_method=method, num_calibration=100),
    )
    assert record.calibration_samples == 100
    assert validate(record, digits, trained_model, repeats=2).passed
    assert "histogram" not in capsys.readouterr().out  # onnxruntime's calibrator progress stays out of stdout


@pytest.mark.parametrize("quantization", ["int8-dynamic", "int8-static"])
def test_excluded_onnx_layer_stays_float(tmp_path, trained_model, digits, quantization):
    import onnx

    layer = _dense_names(trained_model)[1]
    record = export_onnx(
        trained_model,
        tmp_path / "x.onnx",
        quantization=quantization,
        calibration_data=digits,
        config=QuantConfig(exclude=(layer,)),
    )
    proto = onnx.load(str(record.path))
    ours = [n for n in proto.graph.node if layer in n.name.split("/")]
    matmuls = [
        n for n in ours if n.op_type in ("MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul")
    ]
    floats = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert matmuls and all(n.op_type in ("MatMul", "Gemm") and set(n.input) & floats for n in matmuls)  # a float kernel
    quantized = [
        n for n in proto.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DequantizeLinear")
    ]
    assert quantized and not any(layer in n.name.split("/") for n in quantized if n.op_type != "DequantizeLinear")
    assert validate(record, digits, trained_model, repeats=2).passed


def test_excluded_tflite_layer_stays_float_in_full_integer(tmp_path, trained_model, digits):
    from ai_edge_litert.interpreter import Interpreter

    layer = _dense_names(trained_model)[1]
    record = export_tflite(
        trained_model,
        tmp_path / "x.tflite",
        quantization="int8-full",
        representative_data=digits,
        config=QuantConfig(exclude=(layer,)),
    )
    tensors = Interpreter(model_path=str(record.path)).get_tensor_details()
    ours = [t for t in tensors if layer in t["name"].replace(";", "/").split("/")]
    assert ours and all(np.dtype(t["dtype"]) == np.float32 for t in ours)
    assert any(np.dtype(t["dtype"]) == np.int8 for t in tensors if t not in ours)
    assert validate(record, digits, trained_model, repeats=2).passed


def test_per_tensor_tflite_has_one_scale_per_tensor(tmp_path, trained_model, digits):
    from ai_edge_litert.interpreter import Interpreter

    record = export_tflite(
        trained_model,
        tmp_path / "t.tflite",
        quantization="int8-full",
        representative_data=digits,
        config=QuantConfig(per_channel=False),
    )
    scales = [
        len(t["quantization_parameters"]["scales"])
        for t in Interpreter(model_path=str(record.path)).get_tensor_details()
    ]
    assert max(scales) == 1
    assert validate(record, digits, trained_model, repeats=2).passed


def test_unknown_excluded_name_and_unsupported_knobs_are_refused(tmp_path, trained_model, digits):
    with pytest.raises(UsageError, match="no ONNX node or Keras layer named 'nope'"):
        export_onnx(
            trained_model, tmp_path / "m.onnx", quantization="int8-dynamic", config=QuantConfig(exclude=("nope",))
        )
    with pytest.raises(UsageError, match="no Keras layer named 'nope'"):
        export_tflite(
            trained_model,
            tmp_path / "m.tflite",
            quantization="int8-full",
            representative_data=digits,
            config=QuantConfig(exclude=("nope",)),
        )
    with pytest.raises(UsageError, match="min/max only"):
        export_tflite(
            trained_model,
            tmp_path / "m.tflite",
            quantization="int8-full",
            representative_data=digits,
            config=QuantConfig(calibration_method="entropy"),
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("fmt", "quantization"), [("tflite", "float32"), ("tflite", "int8-weights"), ("onnx", "float16")]
)
def test_exclude_is_ignored_with_one_line_by_variants_that_do_not_take_it(
    tmp_path, trained_model, digits, caplog, fmt, quantization
):
    """Issue 22: --exclude aborted the run whenever a TFLite float variant was requested (the README's own example)."""
    import logging

    from deploykit.export import export_variant

    with caplog.at_level(logging.INFO, logger="deploykit"):
        record = export_variant(
            trained_model,
            fmt,
            quantization,
            tmp_path / f"m.{fmt}",
            digits,
            config=QuantConfig(exclude=(_dense_names(trained_model)[1],)),
        )
    lines = [r.getMessage() for r in caplog.records if "exclude" in r.getMessage()]
    assert len(lines) == 1 and f"{quantization} ignores it" in lines[0], lines
    assert record.path.exists() and validate(record, digits, trained_model, repeats=2).passed
