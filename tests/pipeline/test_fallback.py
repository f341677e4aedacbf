"""When the run falls back to the user's folded model, and what its report entry says (pure rules, no runtime)."""

from __future__ import annotations

from deploykit.pipeline.fallback import (
    FALLBACK,
    describe,
    fallback_file,
    formats_to_fall_back,
    report_section,
)
from deploykit.pipeline.records import ArtifactRow, SplitFigure, Status, StepRecord, Verdict
from deploykit.pipeline.report import fallback_line

TEST_MISS = "missed: test miss: accuracy drop vs the original = 0.02, required <= 0.01 (the budget) (...)"


def _row(file: str, fmt: str, verdict: Verdict, measured: bool = True, checks: str = TEST_MISS) -> ArtifactRow:
    """A row as the export steps write it; ``measured``: it ran in its runtime (else its converter refused it)."""
    return ArtifactRow(
        file=file,
        format=fmt,
        runtime={"onnx": "onnxruntime", "tflite": "litert", "keras": "tf_keras"}[fmt],
        precision="float32",
        quantization="float32",
        sparsity=0.9,
        size_bytes=100,
        gzip_bytes=50,
        compression=10.0,
        accuracy=0.9,
        accuracy_change=-0.02,
        agreement=0.98,
        max_abs_diff=1e-6,
        latency_b1_ms=0.01,
        throughput_b256=1e6,
        verdict=verdict,
        checks=checks if verdict is Verdict.REJECTED else "within",
        validation=SplitFigure("validation", 0.91, -0.005, [-0.01, 0.0], True) if measured else None,
    )


REJ, PASS = Verdict.REJECTED, Verdict.PASS


def test_a_format_falls_back_only_when_nothing_of_it_shipped():
    onnx_rejected = [_row("model.onnx", "onnx", REJ), _row("model_int8-dynamic.onnx", "onnx", REJ)]
    tflite_int8 = [_row("model.tflite", "tflite", REJ), _row("model_int8-full.tflite", "tflite", PASS)]
    assert formats_to_fall_back(onnx_rejected + tflite_int8, ["onnx", "tflite"]) == ["onnx"]  # serve has no ONNX
    assert formats_to_fall_back(tflite_int8, ["tflite"]) == []  # an int8 file shipped: what was asked for
    everything = onnx_rejected + [_row("model.tflite", "tflite", REJ)]
    assert formats_to_fall_back(everything, ["onnx", "tflite"]) == ["onnx", "tflite"]
    assert formats_to_fall_back([_row("model.onnx", "onnx", Verdict.NOT_VALIDATED)], ["onnx"]) == []


def test_a_format_its_converter_refused_does_not_fall_back():
    refused = [_row("model.tflite", "tflite", REJ, measured=False, checks="export failed: unsupported op")]
    assert formats_to_fall_back(refused, ["tflite"]) == []  # the user's model has the same layers
    assert formats_to_fall_back([], ["onnx"]) == []  # nothing made at all (e.g. the time budget skipped it)
    assert formats_to_fall_back([_row("ensemble/ensemble.onnx", "onnx", REJ)], ["onnx"]) == []  # not the chain's


def test_the_entry_names_the_misses_the_files_and_why_test_does_not_bias_it():
    chain = [_row("model.onnx", "onnx", REJ), _row("model.tflite", "tflite", REJ), _row("model.keras", "keras", REJ)]
    rows = [_row(fallback_file("onnx"), "onnx", PASS), _row(fallback_file("tflite"), "tflite", PASS)]
    entry = describe(chain, ["onnx", "tflite"], rows, "your model folded")
    assert entry.missed == {"model.onnx": "test miss: accuracy drop vs the original"} | {
        "model.tflite": "test miss: accuracy drop vs the original"
    }
    assert entry.shipped == ["original.onnx", "original.tflite"] and entry.rejected == [] and entry.test_miss
    assert entry.line == (
        "the compressed model missed the budget on test (model.onnx, model.tflite: test miss: accuracy drop vs the "
        "original); shipped your model folded: original.onnx, original.tflite"
    )
    assert entry.decided_on == "test" and "nothing was selected among candidates" in entry.unbiased


def test_a_miss_on_validation_is_not_called_a_test_miss_and_a_rejected_fallback_says_so():
    chain = [_row("model_int8-dynamic.onnx", "onnx", REJ, checks="missed: validation accuracy drop = 0.03, ...")]
    entry = describe(chain, ["onnx"], [_row("original.onnx", "onnx", REJ)], "your model folded")
    assert not entry.test_miss and entry.line.startswith("every file of the compressed model was rejected in onnx")
    assert "on test" not in entry.line
    assert entry.shipped == [] and entry.rejected == ["original.onnx"] and entry.line.endswith("nothing shipped")


def test_report_json_carries_one_fallback_entry_or_null():
    chain, rows = [_row("model.onnx", "onnx", REJ)], [_row("original.onnx", "onnx", PASS)]
    entry = describe(chain, ["onnx"], rows, "your model folded")
    done = StepRecord(FALLBACK, Status.DONE, entry.line, detail=entry)
    report = report_section({"notes": ["other"]}, [done])
    assert report[FALLBACK]["shipped"] == ["original.onnx"] and report["notes"] == [f"fallback: {entry.line}", "other"]
    assert fallback_line(report)[0].startswith("**Fallback**: the compressed model missed the budget on test")
    quiet = report_section({"notes": []}, [StepRecord(FALLBACK, Status.DONE, "not needed")])
    assert quiet[FALLBACK] is None and quiet["notes"] == [] and fallback_line(quiet) == []
