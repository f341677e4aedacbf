"""The objective's decision (deploykit.pipeline.objective): the rule on measured times, the options that set it,
and serve's reading of a report.json. No runtime here: the end-to-end run is tests/pipeline/test_objective_e2e.py."""

from __future__ import annotations

import json

import pytest

from deploykit.errors import ConfigError
from deploykit.pipeline import OptimizeConfig
from deploykit.pipeline.objective import choose, knee, objective_lines, pareto, recommend, with_speedups
from deploykit.pipeline.records import ArtifactRow, Verdict
from deploykit.pipeline.tables import DEFAULT_BATCH_SIZE, Objective
from deploykit.records import to_jsonable


def _row(file: str, fmt: str, quantization: str, gzip: int) -> ArtifactRow:
    precision = "float32" if quantization == "float32" else "float16" if quantization == "float16" else "int8"
    return ArtifactRow(
        file=file,
        format=fmt,
        runtime="onnxruntime" if fmt == "onnx" else "litert",
        precision=precision,
        quantization=quantization,
        sparsity=0.0,
        size_bytes=gzip,
        gzip_bytes=gzip,
        compression=1.0,
        accuracy=0.9,
        accuracy_change=0.0,
        agreement=1.0,
        max_abs_diff=0.0,
        latency_b1_ms=0.1,
        throughput_b256=1000.0,
        verdict=Verdict.PASS,
    )


ROWS = [
    _row("model.onnx", "onnx", "float32", 100_000),
    _row("model_int8-dynamic.onnx", "onnx", "int8-dynamic", 25_000),
    _row("model_int8-static.onnx", "onnx", "int8-static", 27_000),
    _row("model.tflite", "tflite", "float32", 101_000),
    _row("model_int8-full.tflite", "tflite", "int8-full", 26_000),
]
# (batch-1 ms, batch-256 ms): the dynamic int8 ONNX is the smallest but slower than float32 (ConvInteger), the static
# one is a little larger and the fastest; the original float32 files are slower still (no fold, no pruning)
TIMES = {
    "model.onnx": (0.20, 10.0),
    "model_int8-dynamic.onnx": (0.50, 30.0),
    "model_int8-static.onnx": (0.15, 6.0),
    "model.tflite": (0.25, 12.0),
    "model_int8-full.tflite": (0.22, 9.0),
    "original float32 onnx": (0.30, 20.0),
    "original float32 tflite": (0.30, 24.0),
}


def test_each_objective_takes_its_own_file_and_a_slower_int8_is_never_the_fastest():
    rec = recommend(ROWS, TIMES, Objective.BALANCED, 256)
    assert rec.recommended["size"] == "model_int8-dynamic.onnx"
    assert rec.recommended["latency"] == "model_int8-static.onnx"
    dynamic = next(c for c in rec.candidates if c.file == "model_int8-dynamic.onnx")
    assert (
        dynamic.slower
        == "2.50x slower at batch 1 and 3.00x slower at batch 256 than model.onnx (float32) in onnxruntime"
    )
    assert any("model_int8-dynamic.onnx" in n and "3.00x slower at batch 256" in n for n in rec.notes)
    # the speed-ups are against the original's float32 file in the same runtime
    static = next(c for c in rec.candidates if c.file == "model_int8-static.onnx")
    assert static.speedup_b1 == pytest.approx(0.30 / 0.15) and static.speedup_batch == pytest.approx(20.0 / 6.0)
    # per format: what serve and Triton read
    assert rec.by_format["onnx"] == {
        "size": "model_int8-dynamic.onnx",
        "latency": "model_int8-static.onnx",
        "balanced": "model_int8-static.onnx",
    }
    assert rec.by_format["tflite"]["latency"] == "model_int8-full.tflite"
    assert rec.chosen == rec.recommended["balanced"]


def test_the_fastest_is_never_slower_than_float32_even_when_it_is_the_only_quantized_file():
    rows = [ROWS[0], ROWS[1]]
    rec = recommend(rows, TIMES, Objective.LATENCY, 256)
    assert rec.chosen == "model.onnx" and rec.recommended["size"] == "model_int8-dynamic.onnx"


def test_times_within_five_percent_are_a_tie_the_smaller_file_wins():
    times = dict(TIMES, **{"model_int8-static.onnx": (0.2, 10.2)})  # 2% slower than float32 at batch 256: noise
    rec = recommend(ROWS[:3], times, Objective.LATENCY, 256)
    assert rec.chosen == "model_int8-static.onnx"


def test_the_pareto_front_and_its_knee():
    rec = recommend(ROWS, TIMES, Objective.BALANCED, 256)
    front = pareto(rec.candidates)
    # smallest first; each next point strictly faster; nothing off the front is as small and as fast as a point on it
    assert [c.file for c in front] == ["model_int8-dynamic.onnx", "model_int8-full.tflite", "model_int8-static.onnx"]
    for c in rec.candidates:
        if c not in front:
            assert any(f.gzip_bytes <= c.gzip_bytes and f.batch_ms <= c.batch_ms for f in front)
    # the knee: the static int8 is 8% larger than the smallest and 5x faster than it: nearest the ideal corner
    assert knee(front).file == "model_int8-static.onnx"
    assert knee([]) is None and choose([], Objective.SIZE) is None


def test_the_speed_up_column_and_the_report_section():
    rec = recommend(ROWS, TIMES, Objective.SIZE, 64)
    rows = with_speedups([*ROWS, _row("model.keras", "keras", "float32", 100_000)], rec)
    by_file = {r.file: r for r in rows}
    assert by_file["model.onnx"].speedup_batch == pytest.approx(2.0) and by_file["model.keras"].speedup_b1 is None
    text = "\n".join(objective_lines(json.loads(json.dumps(to_jsonable(rec)))))
    assert "## Recommended (objective: size, batch sizes 1 and 64)" in text
    assert "| size (the run's) | `model_int8-dynamic.onnx` |" in text and "speed-up b64" in text
    assert "never recommended as the fastest" in text


def test_the_options_live_in_the_plan_table():
    default = OptimizeConfig()
    assert default.plan.objective is Objective.BALANCED and default.plan.batch_size == DEFAULT_BATCH_SIZE == 256
    c = default.with_options(objective="latency", batch_size=32)
    assert c.plan.objective is Objective.LATENCY and c.plan.batch_size == 32
    assert OptimizeConfig.from_toml_text(c.to_toml()) == c
    assert 'objective = "latency"' in c.to_toml() and "batch_size = 32" in c.to_toml()
    with pytest.raises(ConfigError, match="plan.objective"):
        default.with_options(objective="fastest")
    with pytest.raises(ConfigError, match="plan.batch_size"):
        OptimizeConfig.from_toml_text("[plan]\nbatch_size = 0\n")


def test_the_cli_flags_set_them():
    from deploykit.cli.main import build_parser
    from deploykit.cli.optimize import options_from_args

    args = build_parser().parse_args(["optimize", "--objective", "size", "--batch-size", "8"])
    options = options_from_args(args)
    assert options["objective"] == "size" and options["batch_size"] == 8
    with pytest.raises(SystemExit):
        build_parser().parse_args(["optimize", "--objective", "speed"])


def test_serve_reads_the_recommended_model_off_report_json(tmp_path):
    from deploykit.serve.discover import discover_models

    for name in ("model.onnx", "model_int8-dynamic.onnx", "model_int8-static.onnx"):
        (tmp_path / name).write_bytes(b"onnx")  # discovery does not open the files
    rec = recommend(ROWS[:3], TIMES, Objective.BALANCED, 256)
    (tmp_path / "report.json").write_text(json.dumps({"objective": to_jsonable(rec)}))
    warnings: list[str] = []
    fast = discover_models(tmp_path, prefer="latency", warn=warnings.append)
    small = discover_models(tmp_path, prefer="size", warn=warnings.append)
    assert fast["recommended"] == tmp_path / "model_int8-static.onnx"
    assert small["recommended"] == tmp_path / "model_int8-dynamic.onnx"
    assert "recommended" not in discover_models(tmp_path)  # the library call without a preference: as before
    assert warnings == []
    # a report naming a file outside the folder is not followed
    (tmp_path / "report.json").write_text(json.dumps({"objective": {"by_format": {"onnx": {"latency": "../x.onnx"}}}}))
    assert "recommended" not in discover_models(tmp_path, prefer="latency", warn=warnings.append)
    assert len(warnings) == 1 and "not an ONNX file of" in warnings[0]


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        ({"avx2", "fma"}, "this CPU has no int8 dot-product instructions"),
        ({"avx2", "avx512f", "avx512_vnni"}, "the smaller int8 products save less than quantizing"),
    ],
)
def test_a_slower_int8_file_is_told_why_on_this_cpu(monkeypatch, flags, why):
    """Issue 23: an int8 file slower than float32 is reported with by how much and why; the why depends on the CPU's
    int8 dot-product instructions (without them int8 kernels gain little; with them, the model's layers are small)."""
    from deploykit.export import cpu
    from deploykit.pipeline.report import notes as validation_notes

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    rec = recommend(ROWS, TIMES, Objective.BALANCED, 256)
    note = next(n for n in rec.notes if n.startswith("model_int8-dynamic.onnx"))
    assert "3.00x slower at batch 256" in note and f", because {why}" in note
    slow = [ROWS[0], ArtifactRow(**{**vars(ROWS[1]), "latency_b1_ms": 0.3, "throughput_b256": 400.0})]
    (line,) = validation_notes(slow)
    assert "3.00x slower at batch 1" in line and f", because {why}" in line
    assert all("why" not in n for n in validation_notes([ROWS[0], ROWS[2]]))  # not slower: nothing to explain


def test_the_objective_s_times_replace_validation_s_slower_notes_for_the_files_it_timed():
    from deploykit.pipeline.objective import merged_notes

    rec = recommend(ROWS, TIMES, Objective.BALANCED, 256)
    validation = [
        "model_int8-static.onnx: int8 is 1.10x slower at batch 1 than float32 in onnxruntime on this CPU (...)",
        "model_int8-dynamic.onnx: int8 is 2.00x slower at batch 1 than float32 in onnxruntime on this CPU (...)",
        "model_x.onnx: something else",
    ]
    notes = merged_notes(validation, rec)
    assert notes[0] == "model_x.onnx: something else"
    assert [n.split(":")[0] for n in notes[1:]] == ["model_int8-dynamic.onnx"]  # static is not slower when interleaved
    assert "3.00x slower at batch 256" in notes[1]


def test_the_step_is_skipped_without_candidates_or_without_time_for_it(tmp_path):
    from types import SimpleNamespace

    from deploykit.pipeline.objective import objective_step
    from deploykit.pipeline.records import Status, StepOutput, StepRecord

    made = (StepOutput(None, StepRecord("export onnx float32", Status.DONE), artifacts=(ROWS[0],)),)
    plan = SimpleNamespace(budget=60.0, fits=lambda seconds: False, export_seconds=lambda quant: 5.0)
    ctx = SimpleNamespace(made=made, folder=tmp_path, plan=plan)
    skipped = objective_step("model", ctx)  # model.onnx is not in the folder: nothing shipped to time
    assert skipped.record.status is Status.SKIPPED and "no shipped ONNX / TFLite" in skipped.record.reason
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    skipped = objective_step("model", ctx)
    assert skipped.record.status is Status.SKIPPED and "time budget" in skipped.record.reason


@pytest.mark.parametrize("metric", ["accuracy", "rmse"])
def test_the_latency_accuracy_front_is_drawn_for_a_classifier_and_a_regressor(tmp_path, metric):
    import dataclasses

    from deploykit.core.evaluate import Metric
    from deploykit.pipeline.objective_plot import latency_vs_accuracy
    from deploykit.pipeline.records import ModelFigures

    rows = ROWS if metric == "accuracy" else [dataclasses.replace(r, accuracy=None, rmse=50.0) for r in ROWS]
    original = ModelFigures(
        1000, 900, 0.0, 0.9 if metric == "accuracy" else None, 1, 1, rmse=None if metric == "accuracy" else 49.0
    )
    rec = recommend(rows, TIMES, Objective.BALANCED, 256)
    path = latency_vs_accuracy(rows, rec, tmp_path / "front.png", 0.01, Metric(metric), original)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
