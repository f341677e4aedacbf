"""The report's notes: a variant slower than float32 in its runtime says so, at batch 1 and at batch 256."""

from __future__ import annotations

from deploykit.pipeline.records import ArtifactRow, Verdict
from deploykit.pipeline.report import notes


def _row(file, precision, b1_ms, b256_per_s, gzip=1000):
    return ArtifactRow(
        file=file,
        format="onnx",
        runtime="onnxruntime",
        precision=precision,
        quantization=precision,
        sparsity=0.0,
        size_bytes=gzip,
        gzip_bytes=gzip,
        compression=1.0,
        accuracy=0.9,
        accuracy_change=0.0,
        agreement=1.0,
        max_abs_diff=0.0,
        latency_b1_ms=b1_ms,
        throughput_b256=b256_per_s,
        verdict=Verdict.PASS,
    )


def test_an_int8_model_slower_at_batch_256_only_is_named_with_its_ratio():
    rows = [_row("model.onnx", "float32", 1.0, 4000.0, 4000), _row("model_int8.onnx", "int8", 1.0, 1000.0, 1000)]
    (note,) = notes(rows)
    assert note.startswith("model_int8.onnx: int8 is 4.00x slower at batch 256 than float32")
    assert "batch 1" not in note and "4.0x smaller gzip" in note


def test_slower_at_both_batches_names_both_and_a_faster_variant_gets_no_note():
    rows = [
        _row("model.onnx", "float32", 1.0, 4000.0),
        _row("slow.onnx", "int8", 3.0, 2000.0),
        _row("fast.onnx", "int8", 0.5, 8000.0),
    ]
    (note,) = notes(rows)
    assert "3.00x slower at batch 1 and 2.00x slower at batch 256" in note and note.startswith("slow.onnx")
