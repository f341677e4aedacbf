"""The report's plots: the Pareto front of the tries, and PNGs that are written."""

from __future__ import annotations

from deploykit.pipeline.plots import accuracy_vs_size, latency, pareto_front
from deploykit.pipeline.records import ArtifactRow, Stage, Try, Verdict


def test_pareto_front_keeps_only_points_no_other_beats():
    points = [(10, 0.90), (5, 0.80), (20, 0.95), (12, 0.85), (5, 0.82), (30, 0.94)]
    assert pareto_front(points) == [(5, 0.82), (10, 0.90), (20, 0.95)]


def _row(file, fmt, precision, gzip, acc, verdict):
    return ArtifactRow(
        file,
        fmt,
        "onnxruntime",
        precision,
        "none",
        0.5,
        2 * gzip,
        gzip,
        50_000 / gzip,
        acc,
        acc - 0.98,
        1.0,
        0.0,
        0.006 if fmt != "keras" else 12.0,
        1e6,
        verdict,
    )


def test_plots_write_pngs_with_tries_and_rejected_points(tmp_path):
    rows = [
        _row("original.keras", "keras", "float32", 50_000, 0.98, Verdict.REFERENCE),
        _row("model.onnx", "onnx", "float32", 9_000, 0.975, Verdict.PASS),
        _row("model_int8.onnx", "onnx", "int8", 4_000, 0.96, Verdict.REJECTED),
    ]
    tries = [
        Try(Stage.SPARSITY, "prune 95%", 0.95, -0.03, 7_000, False),
        Try(Stage.SPARSITY, "prune 90%", 0.975, -0.005, 9_500, True),
        Try(Stage.INT8, "onnx int8-dynamic", None, None, 0, False, "crashed"),
    ]
    for path in (accuracy_vs_size(rows, tries, tmp_path / "a.png", budget=0.01), latency(rows, tmp_path / "l.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
