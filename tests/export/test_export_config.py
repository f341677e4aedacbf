"""Export options: names parsed at the boundary, configs validated on construction and round-tripping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.errors import ConfigError, UsageError
from deploykit.export.config import (
    MAX_OPSET,
    MIN_OPSET,
    ExportConfig,
    ExportFormat,
    OnnxQuantization,
    Precision,
    QuantizeOption,
    TfliteQuantization,
    Tolerance,
    parse_enum,
)


def test_int8_maps_to_full_integer_tflite_and_static_onnx():
    config = ExportConfig(formats="onnx,tflite", quantize="none,float16,int8,dynamic")
    got = {(fmt.value, opt.for_format(fmt).value) for fmt, opt in config.variants()}
    assert got == {
        ("onnx", "none"), ("onnx", "float16"), ("onnx", "int8-static"), ("onnx", "int8-dynamic"),
        ("tflite", "none"), ("tflite", "float16"), ("tflite", "int8"), ("tflite", "dynamic"),
    }
    assert len(config.variants()) == 8


def test_onnx_names_are_aliases_and_duplicates_collapse():
    config = ExportConfig(quantize=["int8-static", "int8", "INT8-dynamic", "float32"])
    assert config.quantize == (QuantizeOption.INT8, QuantizeOption.DYNAMIC, QuantizeOption.NONE)


@pytest.mark.parametrize("kind, bad", [(OnnxQuantization, "int4"), (TfliteQuantization, "int8-static"), (ExportFormat, "pdf")])
def test_unknown_name_is_a_usage_error_listing_the_choices(kind, bad):
    with pytest.raises(UsageError, match=rf"unknown .*{bad}.*choose from"):
        parse_enum(kind, bad, "thing")


def test_none_means_no_quantization():
    assert parse_enum(OnnxQuantization, None, "q") is OnnxQuantization.NONE
    assert parse_enum(TfliteQuantization, "none", "q") is TfliteQuantization.NONE


@pytest.mark.parametrize(
    "options, key",
    [
        ({"formats": "onnx,zip"}, "format"),
        ({"quantize": "none,int3"}, "quantization"),
        ({"opset": MIN_OPSET - 1}, "opset"),
        ({"opset": MAX_OPSET + 1}, "opset"),
        ({"num_calibration": 0}, "num_calibration"),
        ({"repeats": 0}, "repeats"),
        ({"int8_io": "yes"}, "int8_io"),
        ({"formats": "tflite", "triton": True}, "triton"),
        ({"tolerance": {"min_agreement": 1.5}}, "min_agreement"),
        ({"tolerance": {"max_diff": 1.0}}, "max_diff"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        ExportConfig(**options)


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="unknown key 'quantise'"):
        ExportConfig.from_dict({"quantise": "int8"})


def test_default_tolerances_per_precision():
    assert Tolerance.for_precision(Precision.FLOAT32) == Tolerance(max_abs_diff=1e-4)
    assert Tolerance.for_precision("float16") == Tolerance(min_agreement=0.995)
    assert Tolerance.for_precision(Precision.INT8) == Tolerance(max_accuracy_drop=0.01)
    config = ExportConfig(tolerance=Tolerance(max_abs_diff=0.5))
    assert config.tolerance_for(Precision.INT8) == Tolerance(max_abs_diff=0.5, max_accuracy_drop=0.01)
    assert config.tolerance_for(Precision.FLOAT32) == Tolerance(max_abs_diff=0.5)


@settings(max_examples=25, deadline=None)
@given(
    formats=st.lists(st.sampled_from(["onnx", "tflite"]), min_size=1, max_size=2, unique=True),
    quantize=st.lists(st.sampled_from([q.value for q in QuantizeOption]), min_size=1, max_size=4, unique=True),
    opset=st.integers(MIN_OPSET, MAX_OPSET),
    num_calibration=st.integers(1, 5000),
    int8_io=st.booleans(),
    drop=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_config_round_trips_through_a_dict(formats, quantize, opset, num_calibration, int8_io, drop):
    tolerance = None if drop is None else Tolerance(max_accuracy_drop=drop)
    config = ExportConfig(formats=formats, quantize=quantize, opset=opset, num_calibration=num_calibration,
                          int8_io=int8_io, triton="onnx" in formats, tolerance=tolerance)
    again = ExportConfig.from_dict(config.to_dict())
    assert again == config
    assert [f.value for f in again.formats] == formats
