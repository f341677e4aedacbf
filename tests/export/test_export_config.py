"""Export options: one vocabulary parsed at the boundary, configs validated on construction and round-tripping."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.errors import ConfigError, UsageError
from deploykit.export.config import (
    VARIANTS,
    ExportConfig,
    ExportFormat,
    Precision,
    QuantConfig,
    Quantization,
    Tolerance,
    TritonConfig,
    parse_enum,
)
from deploykit.onnx.builder import MAX_OPSET, MIN_OPSET


def test_each_variant_is_written_in_the_formats_it_exists_in():
    config = ExportConfig(
        formats="onnx,tflite", quantize="float32,float16,int8-dynamic,int8-static,int8-full,int8-weights"
    )
    got = [(fmt.value, q.value) for fmt, q in config.variants()]
    assert got == [
        ("onnx", "float32"),
        ("onnx", "float16"),
        ("onnx", "int8-dynamic"),
        ("onnx", "int8-static"),
        ("tflite", "float32"),
        ("tflite", "float16"),
        ("tflite", "int8-full"),
        ("tflite", "int8-weights"),
    ]


def test_names_are_case_insensitive_and_duplicates_collapse():
    config = ExportConfig(quantize=["int8-static", "INT8-dynamic", "float32", "int8-static"])
    assert config.quantize == (Quantization.INT8_STATIC, Quantization.INT8_DYNAMIC, Quantization.FLOAT32)


@pytest.mark.parametrize("kind, bad", [(Quantization, "int4"), (ExportFormat, "pdf")])
def test_unknown_name_is_a_usage_error_listing_the_choices(kind, bad):
    with pytest.raises(UsageError, match=rf"thing must be one of '.+', got '{bad}'"):
        parse_enum(kind, bad, "thing")


@pytest.mark.parametrize(
    "old, new",
    [
        ("none", "float32"),
        ("int8", "int8-dynamic or int8-static (ONNX), int8-full"),
        ("dynamic", "int8-dynamic (ONNX) or int8-weights (TFLite)"),
    ],
)
def test_earlier_names_are_refused_naming_the_new_one(old, new):
    with pytest.raises(ConfigError, match=re.escape(f"'{old}' was renamed: use {new}")):
        ExportConfig(quantize=old)


def test_none_means_float32():
    assert parse_enum(Quantization, None, "q") is Quantization.FLOAT32


def test_every_variant_has_one_row_and_one_file_name():
    assert set(VARIANTS) == set(Quantization)
    names = {q.file_name(f) for q in Quantization for f in q.formats}
    assert len(names) == sum(len(q.formats) for q in Quantization)
    assert Quantization.FLOAT32.file_name(ExportFormat.ONNX) == "model.onnx"
    assert Quantization.INT8_DYNAMIC.file_name(ExportFormat.ONNX) == "model_int8-dynamic.onnx"
    assert Quantization.INT8_FULL.file_name(ExportFormat.TFLITE) == "model_int8-full.tflite"
    assert {q for q in Quantization if q.needs_calibration} >= {Quantization.INT8_STATIC, Quantization.INT8_FULL}
    assert all(q.precision is Precision.INT8 for q in Quantization if q.value.startswith("int8"))


@pytest.mark.parametrize(
    "options, key",
    [
        ({"formats": "onnx,zip"}, "format"),
        ({"quantize": "float32,int3"}, "quantization"),
        ({"formats": "tflite", "quantize": "int8-dynamic"}, "exists only in onnx"),
        ({"formats": "onnx", "quantize": "int8-full"}, "exists only in tflite"),
        ({"opset": MIN_OPSET - 1}, "opset"),
        ({"opset": MAX_OPSET + 1}, "opset"),
        ({"quantization": {"num_calibration": 0}}, "num_calibration"),
        ({"quantization": {"calibration_method": "kl"}}, "calibration_method"),
        ({"quantization": {"per_channel": "yes"}}, "per_channel"),
        ({"quantization": {"exclude": [1]}}, "exclude"),
        ({"repeats": 0}, "repeats"),
        ({"quantization": {"int8_io": "yes"}}, "int8_io"),
        ({"formats": "tflite", "triton": True}, "triton"),
        ({"triton": {"instance_kind": "tpu"}}, "instance_kind"),
        ({"triton": {"instances": 0}}, "instances"),
        ({"triton": {"max_batch_size": 0}}, "max_batch_size"),
        ({"tolerance": {"min_agreement": 1.5}}, "min_agreement"),
        ({"tolerance": {"max_diff": 1.0}}, "max_diff"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        ExportConfig(**options)


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="unknown key 'quantise'"):
        ExportConfig.from_dict({"quantise": "int8-dynamic"})


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
    quantize=st.lists(st.sampled_from([q.value for q in Quantization]), min_size=1, max_size=4, unique=True),
    opset=st.integers(MIN_OPSET, MAX_OPSET),
    num_calibration=st.integers(1, 5000),
    int8_io=st.booleans(),
    per_channel=st.booleans(),
    method=st.sampled_from(["minmax", "entropy", "percentile"]),
    drop=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_config_round_trips_through_a_dict(
    formats, quantize, opset, num_calibration, int8_io, per_channel, method, drop
):
    quantize = [q for q in quantize if set(Quantization(q).formats) & {ExportFormat(f) for f in formats}] or ["float32"]
    tolerance = None if drop is None else Tolerance(max_accuracy_drop=drop)
    knobs = QuantConfig(
        per_channel=per_channel, calibration_method=method, num_calibration=num_calibration, int8_io=int8_io
    )
    triton = TritonConfig(instances=2) if "onnx" in formats else None
    config = ExportConfig(
        formats=formats, quantize=quantize, opset=opset, quantization=knobs, triton=triton, tolerance=tolerance
    )
    again = ExportConfig.from_dict(config.to_dict())
    assert again == config
    assert [f.value for f in again.formats] == formats
    assert [q.value for q in again.quantize] == quantize


def test_earlier_pipeline_toml_keys_are_translated_with_a_warning():
    from deploykit.pipeline.config import OptimizeConfig

    text = (
        '[export]\nformats = ["onnx", "tflite"]\nprecisions = ["float32", "int8"]\nonnx_int8 = "static"\n'
        'tflite_int8 = "dynamic"\ncalibration_samples = 100\n'
    )
    with pytest.warns(FutureWarning, match="use quantize"):
        config = OptimizeConfig.from_toml_text(text)
    assert config.export.quantize == (Quantization.FLOAT32, Quantization.INT8_STATIC, Quantization.INT8_WEIGHTS)
    assert config.export.quantization.num_calibration == 100
    written = config.to_toml()
    assert "precisions" not in written and "int8-static" in written
    assert OptimizeConfig.from_toml_text(written) == config


def test_the_pipeline_speaks_the_exporters_vocabulary():
    from deploykit.export import bundle
    from deploykit.pipeline import config, export_steps, steps

    assert not any(hasattr(config, name) for name in ("Format", "Precision", "OnnxInt8", "TfliteInt8"))
    assert not any(hasattr(module, name) for module in (steps, export_steps) for name in ("_QUANTIZATION", "RUNTIMES"))
    assert export_steps.artifact_name is bundle.artifact_name
    export = config.ExportStep(formats="onnx", quantize="float32,int8-static-per-tensor")
    assert export.variants() == [
        (ExportFormat.ONNX, Quantization.FLOAT32),
        (ExportFormat.ONNX, Quantization.INT8_STATIC_PER_TENSOR),
    ]
