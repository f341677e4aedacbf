"""The int8 fallback: which settings are tried, in what order, and which one is shipped."""

from __future__ import annotations

import pytest

from deploykit.errors import DataError, UsageError
from deploykit.export.config import CalibrationMethod, ExportFormat, QuantConfig, Quantization
from deploykit.export.int8_prep import STANDARDIZATION
from deploykit.pipeline.int8_search import Int8Variant, chosen, int8_variants, search_int8
from deploykit.pipeline.records import ArtifactRow, Verdict

LAYERS = ["dense", "dense_1", "dense_2"]


def test_requested_setting_first_then_calibration_the_float_standardization_layers_in_float_other_variants():
    """The input standardization in float (the input's width in float numbers) is tried before any try that leaves
    a whole layer in float (its whole kernel): the cheaper fix in size first."""
    knobs = QuantConfig(num_calibration=100, activation_type="int8")  # "auto" would follow this CPU
    onnx = int8_variants(ExportFormat.ONNX, Quantization.INT8_STATIC, knobs, LAYERS, set())
    assert [v.describe() for v in onnx] == [
        "onnx int8-static, 100 minmax calibration samples, int8 activations",
        "onnx int8-static, 400 minmax calibration samples, int8 activations, 4x calibration",
        "onnx int8-static, 400 entropy calibration samples, int8 activations, 4x calibration, entropy",
        "onnx int8-static, 100 minmax calibration samples, int8 activations, inputs standardized in float",
        "onnx int8-static, 100 minmax calibration samples, int8 activations, inputs standardized in float, "
        "constants as measured",
        "onnx int8-static, 400 minmax calibration samples, int8 activations, dense, dense_2 kept in float",
        "onnx int8-static, 400 minmax calibration samples, int8 activations, per-layer fallback",
        "onnx int8-dynamic, fallback",
    ]
    assert onnx[5].knobs.exclude == ("dense", "dense_2")
    assert onnx[6].per_layer == tuple(LAYERS) and not any(v.per_layer for v in onnx[:6] + onnx[7:])
    for standardized in onnx[3:5]:  # on the coarse grid first (smaller), then its constants as measured
        assert standardized.knobs.standardize_input and standardized.knobs.exclude == (STANDARDIZATION,)
    assert not onnx[3].knobs.standardize_exact and onnx[4].knobs.standardize_exact
    assert not any(v.knobs.standardize_input for v in onnx[:3] + onnx[5:])
    tflite = int8_variants(ExportFormat.TFLITE, Quantization.INT8_FULL, knobs, LAYERS, set())
    assert [(v.quantization, v.note) for v in tflite] == [
        (Quantization.INT8_FULL, ""),
        (Quantization.INT8_FULL, "4x calibration"),
        (Quantization.INT8_FULL, "inputs standardized in float"),
        (Quantization.INT8_FULL, "inputs standardized in float, constants as measured"),
        (Quantization.INT8_FULL, "dense, dense_2 kept in float"),
        (Quantization.INT8_FULL, "per-layer fallback"),
        (Quantization.INT8_WEIGHTS, "fallback"),
    ]


def test_raw_tabular_scales_put_the_float_standardization_second_and_keep_it():
    import numpy as np

    from deploykit.pipeline.int8_search import raw_scales

    assert raw_scales(np.geomspace(1e-3, 4e3, 30) ** 2) and not raw_scales(np.full(64, 16.0))
    tflite = int8_variants(ExportFormat.TFLITE, Quantization.INT8_FULL, QuantConfig(), LAYERS, set(), raw_scales=True)
    assert [v.note for v in tflite][:4] == [
        "",
        "inputs standardized in float",
        "inputs standardized in float, constants as measured",
        "4x calibration",
    ]
    assert all(v.knobs.standardize_input for v in tflite[1:]) and tflite[3].knobs.exclude == (STANDARDIZATION,)
    assert [v.knobs.standardize_exact for v in tflite[1:4]] == [False, True, False]  # later tries: the grid
    assert tflite[-1].quantization is Quantization.INT8_WEIGHTS and tflite[-1].knobs.exclude == ()


def test_a_variant_needing_no_calibration_has_no_calibration_tries_and_requested_variants_are_no_fallbacks():
    knobs = QuantConfig()
    dynamic = int8_variants(ExportFormat.ONNX, Quantization.INT8_DYNAMIC, knobs, LAYERS, set(), raw_scales=True)
    assert [(v.quantization, v.knobs.standardize_input, v.knobs.standardize_exact) for v in dynamic] == [
        (Quantization.INT8_DYNAMIC, False, False),
        (Quantization.INT8_DYNAMIC, True, False),
        (Quantization.INT8_DYNAMIC, True, True),
    ]  # static ones: never a silent fallback
    assert dynamic[1].knobs.exclude == ()  # quantize_dynamic leaves the standardization's Sub / Div in float anyway
    assert (
        len(int8_variants(ExportFormat.ONNX, Quantization.INT8_DYNAMIC, knobs, LAYERS, set(), dense_first=False)) == 1
    )
    taken = {Quantization.INT8_WEIGHTS}
    assert [v.quantization for v in int8_variants(ExportFormat.TFLITE, Quantization.INT8_FULL, knobs, LAYERS, taken)][
        -1
    ] is Quantization.INT8_FULL
    entropy = QuantConfig(calibration_method=CalibrationMethod.ENTROPY)
    assert not any(
        "entropy" in v.note for v in int8_variants(ExportFormat.ONNX, Quantization.INT8_STATIC, entropy, LAYERS, set())
    )


def _row(accuracy: float, verdict: Verdict) -> ArtifactRow:
    return ArtifactRow(
        "model_int8-static.onnx",
        "onnx",
        "onnxruntime",
        "int8",
        "int8-static",
        0.0,
        10,
        5,
        2.0,
        accuracy,
        None,
        None,
        None,
        None,
        None,
        verdict,
    )


def _variants(fmt=ExportFormat.ONNX, quant=Quantization.INT8_STATIC) -> list[Int8Variant]:
    return int8_variants(fmt, quant, QuantConfig(), LAYERS, set())


def test_search_stops_at_the_first_setting_that_passes_and_ships_it():
    variants = _variants()
    rows = {
        variants[0]: _row(0.90, Verdict.REJECTED),
        variants[1]: _row(0.95, Verdict.PASS),
        variants[2]: _row(0.97, Verdict.PASS),
    }
    made: list[Int8Variant] = []
    attempts = search_int8(variants, lambda v: made.append(v) or v, lambda v: rows[v])
    assert made == variants[:2] and chosen(attempts).variant == variants[1]


def test_nothing_passing_reports_the_most_accurate_and_an_export_error_is_that_settings_failure():
    variants = _variants(ExportFormat.TFLITE, Quantization.INT8_FULL)

    def make(v):
        if v.quantization is Quantization.INT8_WEIGHTS:
            raise DataError("cannot convert")
        return v

    assert variants[5].per_layer == tuple(LAYERS)  # 3 ranking tries, then the 2 most harmful in float
    rows = {
        variants[0]: _row(0.93, Verdict.REJECTED),
        variants[1]: _row(0.94, Verdict.REJECTED),
        variants[2]: _row(0.90, Verdict.REJECTED),  # the inputs standardized in float, on the grid
        variants[3]: _row(0.90, Verdict.REJECTED),  # and as measured
        variants[4]: _row(0.92, Verdict.REJECTED),
    }
    attempts = search_int8(variants, make, lambda v: rows.get(v, _row(0.91, Verdict.REJECTED)))
    assert [a.error for a in attempts] == [""] * 9 + ["cannot convert"]
    assert [a.variant.note for a in attempts[5:9]] == [
        f"per-layer fallback: {n} in float" for n in ("dense", "dense_1", "dense_2", "dense, dense_1")
    ]
    best = chosen(attempts)
    assert best.variant == variants[1] and not best.passed


def test_a_layer_the_per_layer_fallback_names_and_the_graph_lacks_fails_that_try_not_the_run():
    """The fallback's layers are deploykit's choice, not the user's ``--exclude``: the exporter's refusal of one (as
    MobileNetV2's depthwise convs were refused in an ONNX graph) is that try's failure, and the search goes on."""
    variants = _variants(ExportFormat.TFLITE, Quantization.INT8_FULL)

    def make(v):
        if "dense_1" in v.knobs.exclude:
            raise UsageError("exclude: no ONNX node or Keras layer named 'dense_1' in the graph")
        return v

    attempts = search_int8(variants, make, lambda v: _row(0.91, Verdict.REJECTED))
    refused = [a for a in attempts if "dense_1" in a.variant.knobs.exclude]
    assert refused and all(a.row is None and "named 'dense_1'" in a.error for a in refused)
    assert any(a.variant.per_layer == () and a.variant.note == "per-layer fallback: dense_2 in float" for a in attempts)
    assert attempts[-1].variant.quantization is Quantization.INT8_WEIGHTS  # the ladder went on past the fallback


def test_a_bad_option_is_the_callers_mistake():
    def make(_v):
        raise UsageError("bad opset")

    with pytest.raises(UsageError):
        search_int8(_variants(), make, lambda v: v)


def test_on_a_convnet_int8_dynamic_is_tried_as_int8_static_first_unless_that_is_requested_on_its_own():
    conv = ["conv2d", "conv2d_1", "dense"]
    assert Quantization.INT8_DYNAMIC.for_graph(True) is Quantization.INT8_STATIC
    assert Quantization.INT8_DYNAMIC.for_graph(False) is Quantization.INT8_DYNAMIC
    assert Quantization.INT8_FULL.for_graph(True) is Quantization.INT8_FULL
    tries = int8_variants(
        ExportFormat.ONNX, Quantization.INT8_DYNAMIC, QuantConfig(), conv, set(), dense_first=False, convolutions=True
    )
    assert tries[0].quantization is Quantization.INT8_STATIC and "rather than int8-dynamic" in tries[0].note
    assert [v.quantization for v in tries][-1] is Quantization.INT8_DYNAMIC  # the requested one: the last resort
    assert any(v.per_layer == tuple(conv) for v in tries)
    assert sum(v.quantization is Quantization.INT8_DYNAMIC for v in tries) == 1
    both = int8_variants(
        ExportFormat.ONNX,
        Quantization.INT8_DYNAMIC,
        QuantConfig(),
        conv,
        {Quantization.INT8_STATIC},
        dense_first=False,
        convolutions=True,
    )
    assert [v.quantization for v in both] == [Quantization.INT8_DYNAMIC]
