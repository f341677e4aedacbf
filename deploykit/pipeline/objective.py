"""The run's objective: which shipped artifact to recommend, by measured size and latency (``[plan] objective``).

Size alone is what the sparsity search and int8 buy, but a production user pays for inference time: a file
4x smaller can run slower (int8-dynamic ONNX on convolutions, int8 TFLite without XNNPACK's int8 paths). So every
artifact within the accuracy budget (shipped: accepted on validation, confirmed on test) is timed again in its
own runtime (onnxruntime for ONNX, LiteRT for TFLite) at batch 1 and at ``[plan] batch_size``, interleaved with
the **original** model's float32 file in the same runtime (exported aside, never shipped) so that load drifts hit
all alike, and the run recommends, per objective:

- ``size``: the smallest file (gzip), the faster one on a tie;
- ``latency``: the fastest at the batch size (times within 5% are a tie: the smaller file); a quantized variant
  slower than float32 of the same format (at batch 1 or at the batch size) is never the fastest, and the
  report says by how much it is slower, and why (:func:`deploykit.export.cpu.why_slower`);
- ``balanced`` (the default): on the Pareto front of (gzip size, time at the batch size), the point closest to
  the ideal corner (the smallest size and the shortest time) in log ratios: twice the smallest file weighs as
  much as twice the shortest time.

The run's ``objective`` names the one it recommends (``report.json`` ``objective.chosen``); all three are in the
report, overall and per format, so ``deploykit serve`` (ONNX only) and the Triton repository can point at the
fastest ONNX model (``serve --prefer latency|size``). The files are timed together in a runtime worker (a child
process, as validation runs them): a runtime that dies or raises while timing leaves that file untimed (not
recommended, said in the notes), never the run (:func:`measure`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.contract import RECOMMENDED_MODEL
from deploykit.export.cpu import why_slower
from deploykit.pipeline.records import ArtifactRow, Status, StepOutput, StepRecord, Verdict
from deploykit.pipeline.tables import Objective
from deploykit.records import Record, to_jsonable

STEP = "objective"
RECOMMENDED = RECOMMENDED_MODEL  # the served name of the fastest ONNX model (``deploykit serve``, Triton)
#: A speed ratio vs float32 below this is slower (above it: within timing noise); the same bound as validation's.
SLOWER_BELOW = 0.95
#: Formats timed by the objective (the MC / ensemble models answer another question: they are not candidates).
FORMATS = ("onnx", "tflite")
#: Seconds of calls the slowest file gets at each batch size (more calls than ``latency_repeats`` when they are
#: short): a fast file's fastest call is then taken over dozens of calls, not three.
SECONDS_PER_FILE = 0.25
#: Calls per file and batch size at most: the fastest of 100 interleaved calls is steady, and a tiny model's calls
#: (tens of microseconds) would otherwise be repeated thousands of times to fill their quarter second.
MAX_CALLS = 100


@dataclass
class Candidate(Record):
    """One shipped artifact timed in its runtime, against the original model's float32 file in the same runtime."""

    file: str
    format: str
    runtime: str
    precision: str
    quantization: str
    gzip_bytes: int
    b1_ms: float  # fastest single-example call of the interleaved ones
    batch_ms: float  # fastest call at the batch size
    speedup_b1: float | None = None  # original float32 time / this time (> 1: faster)
    speedup_batch: float | None = None
    slower: str = ""  # why it is never the fastest: slower than float32 of its format, and by how much


@dataclass
class Recommendation(Record):
    """What the objective step measured and recommends (``report.json`` ``objective``)."""

    objective: str  # the run's [plan] objective
    batch_size: int
    chosen: str | None  # the file recommended by the run's objective (every format)
    recommended: dict[str, str | None]  # objective -> file, every format
    by_format: dict[str, dict[str, str | None]]  # format -> objective -> file (serve and Triton read "onnx")
    front: list[str]  # the files on the (gzip, batch time) Pareto front
    originals: dict[str, dict[str, float]]  # format -> the original float32 file's b1_ms / batch_ms
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- the pipeline step ----------------------------------------------------------------------------------------


def objective_step(model, ctx) -> StepOutput:
    """Time the shipped ONNX / TFLite artifacts and the original's float32 file, interleaved; recommend one."""
    rows = shipped_rows(ctx)
    if not rows:
        return StepOutput(model, StepRecord(STEP, Status.SKIPPED, "no shipped ONNX / TFLite artifact to time"))
    if not _fits(ctx, {r.format for r in rows}):
        return StepOutput(model, StepRecord(STEP, Status.SKIPPED, "time budget: no time left to time the artifacts"))
    plan = ctx.config.plan
    with tempfile.TemporaryDirectory(prefix="deploykit-objective-") as tmp:
        originals, failed = original_files(ctx, sorted({r.format for r in rows}), Path(tmp))
        files = {r.file: ctx.folder / r.file for r in rows} | {_original_key(f): p for f, p in originals.items()}
        times, untimed = measure(files, ctx.data.x_test, plan.batch_size, ctx.repeats)
    rec = recommend(rows, times, plan.objective, plan.batch_size)
    rec.notes += [f"original float32 {fmt}: could not be exported to time it ({why})" for fmt, why in failed.items()]
    rec.notes += [f"{name}: could not be timed, so it is not recommended ({why})" for name, why in untimed.items()]
    for line in rec.notes:
        ctx.say(f"  {line}")
    plots = _plot(rec, ctx)
    section = tuple(objective_lines(json.loads(json.dumps(to_jsonable(rec), default=str))))
    return StepOutput(model, StepRecord(STEP, Status.DONE, describe(rec), detail=rec), sections=section, plots=plots)


def _plot(rec: Recommendation, ctx) -> tuple[str, ...]:
    """The latency-accuracy front of the shipped rows (their test figures), beside the size-accuracy plot."""
    from deploykit.pipeline.objective_plot import LATENCY_FRONT_PLOT, latency_vs_accuracy

    if not rec.candidates:
        return ()
    rows = [a for out in ctx.made for a in out.artifacts]
    budget = ctx.budget.limit if ctx.config.validate.enabled else None
    latency_vs_accuracy(rows, rec, ctx.folder / LATENCY_FRONT_PLOT, budget, ctx.metric, ctx.original_figures)
    return (LATENCY_FRONT_PLOT,)


def _fits(ctx, formats: set[str]) -> bool:
    """Whether exporting the original at float32 in each format (most of this step's cost) fits the time budget."""
    from deploykit.export.config import Quantization

    plan = ctx.plan
    if plan is None or plan.budget is None:
        return True
    return plan.fits(len(formats) * plan.export_seconds(Quantization.FLOAT32))


def shipped_rows(ctx) -> list[ArtifactRow]:
    """The candidates: ONNX / TFLite artifacts within the budget whose file is in the output folder."""
    rows = [a for out in ctx.made for a in out.artifacts]
    return [
        r
        for r in rows
        if r.format in FORMATS
        and r.verdict in (Verdict.PASS, Verdict.NOT_VALIDATED)
        and "/" not in r.file
        and (ctx.folder / r.file).is_file()
    ]


def original_files(ctx, formats: list[str], folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The original model as float32 ONNX / TFLite in ``folder`` (what every speed-up is against), and the formats
    that failed to export with why (their rows then have no speed-up)."""
    from deploykit.errors import DeployKitError
    from deploykit.export import export_onnx, export_tflite

    made, failed = {}, {}
    for fmt in formats:
        path = folder / f"original.{fmt}"
        try:
            if fmt == "onnx":
                made[fmt] = export_onnx(ctx.original, path, quantization="float32", task=ctx.task).path
            else:
                made[fmt] = export_tflite(ctx.original, path, quantization="float32", task=ctx.task).path
        except (DeployKitError, ValueError, RuntimeError) as exc:
            failed[fmt] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return made, failed


def measure(
    files: dict[str, Path], x: np.ndarray, batch_size: int, repeats: int
) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """(batch-1 ms, batch-``batch_size`` ms) per file: the fastest of each runtime's calls timed round-robin, as many
    calls per file as the slowest file fills :data:`SECONDS_PER_FILE` with (:data:`MAX_CALLS` at most)
    (:func:`deploykit.export.runtimes.interleaved_fastest`: under a time budget, 3 calls at the batch size gave
    "26x slower than float32" for a file 1.2x slower). Also the files that could not be timed, with why.

    The calls run in a runtime worker (a child process, :mod:`deploykit.export.isolated`), as validation's do: a
    runtime that dies natively while timing (a state it reaches only after other interpreters ran beside it) must
    not take the run down after its work is done. When the worker dies, each file is timed alone in a fresh one
    (not interleaved: their ratios are noisier), and the file that takes it down is left untimed with the crash."""
    from deploykit.errors import RuntimeCrashError
    from deploykit.export.isolated import RuntimeWorker

    calls = (min(repeats, MAX_CALLS), max(3, min(repeats // 5, MAX_CALLS)))
    plan = (x, batch_size, calls, SECONDS_PER_FILE, MAX_CALLS)
    worker = RuntimeWorker()
    try:
        try:
            seconds, untimed = worker.time_files(files, *plan)
        except RuntimeCrashError:
            seconds, untimed = {}, {}
            for name, path in files.items():
                try:
                    one, why = worker.time_files({name: path}, *plan)
                except RuntimeCrashError as exc:
                    one, why = {}, {name: str(exc)}
                seconds.update(one)
                untimed.update(why)
    finally:
        worker.close()
    return {n: (1000 * b1, 1000 * bn) for n, (b1, bn) in seconds.items()}, untimed


def _original_key(fmt: str) -> str:
    return f"original float32 {fmt}"


# --- the decision (pure: no runtime) ----------------------------------------------------------------------------


def recommend(
    rows: list[ArtifactRow], times: dict[str, tuple[float, float]], objective: Objective, batch_size: int
) -> Recommendation:
    """The candidates' speed-ups and the file each objective recommends, overall and per format."""
    originals = {
        fmt: {"b1_ms": times[_original_key(fmt)][0], "batch_ms": times[_original_key(fmt)][1]}
        for fmt in FORMATS
        if _original_key(fmt) in times
    }
    cands = [_candidate(r, times[r.file], originals.get(r.format)) for r in rows if r.file in times]
    notes = _mark_slower(cands, batch_size)
    by_format = {fmt: _choices([c for c in cands if c.format == fmt]) for fmt in sorted({c.format for c in cands})}
    overall = _choices(cands)
    return Recommendation(
        objective=objective.value,
        batch_size=batch_size,
        chosen=overall[objective.value],
        recommended=overall,
        by_format=by_format,
        front=[c.file for c in pareto(cands)],
        originals=originals,
        candidates=cands,
        notes=notes,
    )


def _candidate(row: ArtifactRow, time: tuple[float, float], original: dict[str, float] | None) -> Candidate:
    b1, bn = time
    return Candidate(
        file=row.file,
        format=row.format,
        runtime=row.runtime,
        precision=row.precision,
        quantization=row.quantization,
        gzip_bytes=row.gzip_bytes,
        b1_ms=b1,
        batch_ms=bn,
        speedup_b1=None if original is None else original["b1_ms"] / b1,
        speedup_batch=None if original is None else original["batch_ms"] / bn,
    )


def _mark_slower(cands: list[Candidate], batch_size: int) -> list[str]:
    """Mark every non-float32 candidate slower than its format's float32 (the run's, else none): never the fastest."""
    notes = []
    for c in cands:
        base = next((b for b in cands if b.format == c.format and b.precision == "float32"), None)
        if c.precision == "float32" or base is None:
            continue
        ratios = [(c.b1_ms / base.b1_ms, 1), (c.batch_ms / base.batch_ms, batch_size)]
        slower = [f"{r:.2f}x slower at batch {b}" for r, b in ratios if 1 / r < SLOWER_BELOW]
        if slower:
            c.slower = f"{' and '.join(slower)} than {base.file} (float32) in {c.runtime}"
            why = why_slower(c.precision)
            because = f", because {why}" if why else ""
            notes.append(f"{c.file}: {c.precision} is {c.slower}{because}: never recommended as the fastest")
    return notes


def _choices(cands: list[Candidate]) -> dict[str, str | None]:
    return {o.value: (None if (c := choose(cands, o)) is None else c.file) for o in Objective}


def choose(cands: list[Candidate], objective: Objective) -> Candidate | None:
    """The candidate ``objective`` recommends (None: no candidate qualifies)."""
    if objective is Objective.SIZE:
        return min(cands, key=lambda c: (c.gzip_bytes, c.batch_ms), default=None)
    if objective is Objective.LATENCY:
        fast = [c for c in cands if not c.slower]
        best = min((c.batch_ms for c in fast), default=None)
        ties = [c for c in fast if best is not None and best / c.batch_ms >= SLOWER_BELOW]
        return min(ties, key=lambda c: (c.gzip_bytes, c.batch_ms), default=None)
    return knee(pareto(cands))


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """The candidates no other is at least as small and as fast as (and better on one), smallest first."""
    front: list[Candidate] = []
    for c in sorted(cands, key=lambda c: (c.gzip_bytes, c.batch_ms)):
        if not front or c.batch_ms < front[-1].batch_ms:
            front.append(c)
    return front


def knee(front: list[Candidate]) -> Candidate | None:
    """The front's point nearest the ideal corner (the smallest size, the shortest time) in log-ratio terms: a file
    twice the smallest weighs as much as a time twice the shortest, so a few percent of size never outweighs a
    several-fold speed-up (scaling each axis to the front's range would)."""
    if not front:
        return None
    size, time = min(c.gzip_bytes for c in front), min(c.batch_ms for c in front)

    def distance(c: Candidate) -> float:
        return math.log(c.gzip_bytes / size) ** 2 + math.log(c.batch_ms / time) ** 2

    return min(front, key=lambda c: (distance(c), c.batch_ms))


def describe(rec: Recommendation) -> str:
    """One line: what the run recommends and why (the step's record)."""
    chosen = next((c for c in rec.candidates if c.file == rec.chosen), None)
    if chosen is None:
        return f"{rec.objective}: nothing to recommend"
    speed = (
        ""
        if chosen.speedup_batch is None
        else f", {chosen.speedup_b1:.2f}x / {chosen.speedup_batch:.2f}x the original's speed at batch 1 / "
        f"{rec.batch_size}"
    )
    others = ", ".join(f"{o} {f}" for o, f in rec.recommended.items() if o != rec.objective and f)
    return f"recommended ({rec.objective}): {chosen.file}{speed}" + (f"; {others}" if others else "")


# --- the report ----------------------------------------------------------------------------------------------


def recommendation_of(records) -> Recommendation | None:
    """The objective step's record among a run's step records (None: it did not run)."""
    return next((r.detail for r in records if r.step == STEP and isinstance(r.detail, Recommendation)), None)


def with_speedups(rows: list[ArtifactRow], rec: Recommendation | None) -> list[ArtifactRow]:
    """The artifact rows with the objective's speed-ups vs the original filled in."""
    if rec is None:
        return rows
    by_file = {c.file: c for c in rec.candidates}
    return [
        dataclasses.replace(r, speedup_b1=by_file[r.file].speedup_b1, speedup_batch=by_file[r.file].speedup_batch)
        if r.file in by_file and r.format in FORMATS
        else r
        for r in rows
    ]


def merged_notes(notes: list[str], rec: Recommendation) -> list[str]:
    """The report's notes with the objective's slower-than-float32 lines in place of validation's for the files it
    timed: its times are interleaved with float32's, at the run's batch size, so they are the ones to read."""
    timed = tuple(f"{c.file}: " for c in rec.candidates)
    return [n for n in notes if not n.startswith(timed)] + rec.notes


def objective_lines(entry: dict[str, Any] | None) -> list[str]:
    """report.md's "Recommended" section from the ``objective`` entry (:mod:`deploykit.pipeline.objective`)."""
    if not entry:
        return []
    bs = entry["batch_size"]
    lines = [
        f"## Recommended (objective: {entry['objective']}, batch sizes 1 and {bs})",
        "",
        "Every artifact within the budget timed again in its runtime, interleaved with the original model's "
        "float32 file in the same runtime (speed-up = its time / this time; > 1 is faster).",
        "",
    ]
    cands = {c["file"]: c for c in entry["candidates"]}
    header = ("objective", "artifact", "gzip", "b1", f"b{bs}", "speed-up b1", f"speed-up b{bs}")
    rows = []
    for objective, file in entry["recommended"].items():
        c = cands.get(file)
        mark = " (the run's)" if objective == entry["objective"] else ""
        if c is None:
            rows.append((objective + mark, "—", "", "", "", "", ""))
            continue
        rows.append(
            (
                objective + mark,
                f"`{file}`",
                f"{c['gzip_bytes'] / 1024:,.1f} KiB",
                f"{c['b1_ms']:.3g} ms",
                f"{c['batch_ms']:.3g} ms",
                _times(c["speedup_b1"]),
                _times(c["speedup_batch"]),
            )
        )
    from deploykit.pipeline.report import markdown_table

    lines += [markdown_table(header, rows, right=(2, 3, 4, 5, 6)), ""]
    for fmt, original in entry["originals"].items():
        lines.append(
            f"- original float32 {fmt}: {original['b1_ms']:.3g} ms at batch 1, {original['batch_ms']:.3g} ms at "
            f"batch {bs}"
        )
    lines.append(f"- Pareto front (gzip, batch-{bs} time): " + ", ".join(f"`{f}`" for f in entry["front"]))
    lines += [f"- {n}" for n in entry["notes"]]
    return [*lines, ""]


def _times(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


# --- serving ----------------------------------------------------------------------------------------------------


def triton_alias(ctx, write) -> list[str]:
    """The Triton repository's ``recommended`` model: a copy of the fastest shipped ONNX model (``write(path,
    name)`` writes one model), so a client calls one name whatever file won; [] when nothing was timed."""
    rec = recommendation_of(o.record for o in ctx.made)
    file = None if rec is None else rec.by_format.get("onnx", {}).get(Objective.LATENCY.value)
    if file is None or not (ctx.folder / file).is_file():
        return []
    write(ctx.folder / file, RECOMMENDED)
    return [RECOMMENDED]
