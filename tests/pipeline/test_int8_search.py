"""The int8 fallback: which variants are tried, in what order, and which one is shipped."""

from __future__ import annotations

import dataclasses

import pytest

from deploykit.errors import DataError, UsageError
from deploykit.pipeline.config import ExportStep, Format, OnnxInt8, TfliteInt8
from deploykit.pipeline.int8_search import Int8Variant, chosen, int8_variants, search_int8
from deploykit.pipeline.records import ArtifactRow, Verdict


def test_configured_variant_first_then_more_calibration_then_the_rest():
    export = ExportStep(calibration_samples=100)
    assert [v.describe() for v in int8_variants(Format.ONNX, export)] == [
        "onnx int8-dynamic", "onnx int8-static, 100 calibration samples", "onnx int8-static, 400 calibration samples"]
    assert [v.describe() for v in int8_variants(Format.TFLITE, export)] == [
        "tflite int8, 100 calibration samples", "tflite int8, 400 calibration samples", "tflite dynamic"]
    static = dataclasses.replace(export, onnx_int8=OnnxInt8.STATIC, tflite_int8=TfliteInt8.DYNAMIC)
    assert int8_variants(Format.ONNX, static)[-1].quantization == "int8-dynamic"
    assert int8_variants(Format.TFLITE, static)[0].quantization == "dynamic"


def _row(accuracy: float, verdict: Verdict) -> ArtifactRow:
    return ArtifactRow("model_int8.onnx", "onnx", "onnxruntime", "int8", "int8-dynamic", 0.0, 10, 5, 2.0, accuracy,
                       None, None, None, None, None, verdict)


def test_search_stops_at_the_first_variant_that_passes_and_ships_it():
    variants = int8_variants(Format.ONNX, ExportStep())
    rows = {variants[0]: _row(0.90, Verdict.REJECTED), variants[1]: _row(0.95, Verdict.PASS), variants[2]: _row(0.97, Verdict.PASS)}
    made: list[Int8Variant] = []
    attempts = search_int8(variants, lambda v: made.append(v) or v, lambda v: rows[v])
    assert made == variants[:2] and chosen(attempts).variant == variants[1]


def test_nothing_passing_reports_the_most_accurate_and_an_export_error_is_that_variants_failure():
    variants = int8_variants(Format.TFLITE, ExportStep())

    def make(v):
        if v.quantization == "dynamic":
            raise DataError("cannot convert")
        return v

    rows = {variants[0]: _row(0.93, Verdict.REJECTED), variants[1]: _row(0.94, Verdict.REJECTED)}
    attempts = search_int8(variants, make, lambda v: rows[v])
    assert [a.error for a in attempts] == ["", "", "cannot convert"]
    best = chosen(attempts)
    assert best.variant == variants[1] and not best.passed


def test_a_bad_option_is_the_callers_mistake():
    def make(_v):
        raise UsageError("bad opset")

    with pytest.raises(UsageError):
        search_int8(int8_variants(Format.ONNX, ExportStep()), make, lambda v: v)
