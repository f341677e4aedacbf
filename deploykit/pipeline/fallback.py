"""The ``fallback`` step: a run never ends with nothing to deploy in a format it was asked for.

Every decision of the chain (structured share, sparsity target, int8 settings, temperature) is taken on the
validation split, and every file is confirmed once on the test split (:mod:`deploykit.pipeline.confirm`). When the
kept chain misses the accuracy or NLL budget on test, every file exported from it is rejected, and a user who ran
one command to deploy a model would get only a report. This step then exports the user's own model, after the exact
BatchNorm fold only (no structured pruning, no sparsity, no temperature: float32), in each format that shipped
nothing, measures it in its runtime and holds it to the same budgets as any row.

**When** (:func:`formats_to_fall_back`): per requested format, when the export steps shipped no file of that
format derived from the chain although at least one was made and measured in its runtime. Per format, not "no file
at all": ``deploykit serve`` and the Triton repository read ONNX only, a phone reads TFLite only, so an int8 TFLite
file that shipped leaves a server with nothing to load. Not "no float file": a compressed file of the format that
met the budget is what the user asked for, and an uncompressed copy beside it would only compete with it. Not where
every file of the format was refused by its converter or crashed its runtime: the user's model has the same layers,
so a second conversion would fail the same way and cost as much.

**Names**: ``original.onnx`` / ``original.tflite``, beside ``original.keras`` (the user's model as given), not the
chain's ``model.onnx``. The chain's rows keep their names, numbers and ``rejected`` verdict in the report; a second
``model.onnx`` row would make the report's table, ``OptimizeResult.artifact``, the speed-up join by file name and a
user's script expecting the compressed file ambiguous. Serving needs no name: ``deploykit serve`` serves every
``.onnx`` file by its stem, the Triton repository every shipped ONNX file, and the ``recommended`` alias follows the
objective step, which times these rows like any other.

**Why the test split does not bias the shipped figure**: the choice to fall back is made after the test split was
measured, but it selects nothing among candidates on those rows: the fallback is the user's own model, rewritten
exactly (the fold changes outputs by float rounding, checked), so its test figure is the user's model's, not the
best of several tries.

**The MC Dropout model** follows the ONNX fallback (:func:`~deploykit.pipeline.fallback_source.mc_source`): where
``original.onnx`` shipped because the chain's model missed on test, the MC model is built from the same folded model
of yours, so ``model_mc.onnx`` and the deterministic file a server loads are the same network, and an MC model of a
rejected one is not offered; it is held to the budget on its own as always. Where the ONNX chain shipped, it is
built from the chain's model, as before.
The ensemble is not affected: each member is its own ``optimize`` run, keeping only int8 ONNX files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deploykit.pipeline.fallback_source import FALLBACK, STEM, fallback_file, folded_original
from deploykit.pipeline.records import ArtifactRow, Status, StepOutput, StepRecord, Verdict
from deploykit.records import Record, to_jsonable

FORMATS = ("onnx", "tflite")
NOT_NEEDED = "not needed: in every format a file of the compressed model shipped (or none could be made)"
UNBIASED = (
    "decided after the test split was measured, which does not bias the shipped figure: the fallback is your own "
    "model, at most rewritten exactly (the BatchNorm fold, checked against your model's outputs), so nothing was "
    "selected among candidates on the test rows and its test figure is your model's"
)
UNCERTAINTY = (
    "the MC Dropout model is built from the model the ONNX fallback shipped (your folded model) and held to the "
    "budget on its own; ensemble members keep int8 ONNX files only"
)


@dataclass
class Fallback(Record):
    """What the fallback did (report.json ``fallback``; null when the chain shipped in every format)."""

    formats: list[str]  # the formats in which nothing derived from the chain shipped
    missed: dict[str, str]  # each rejected file of the chain in those formats: the first check it missed
    shipped: list[str]  # the fallback files within the budget (in the output folder)
    rejected: list[str]  # the fallback files that missed it too (their rows say why; not in the folder)
    model: str  # what was exported
    line: str  # one line for the run's output and report.md
    decided_on: str = "test"
    unbiased: str = UNBIASED
    uncertainty: str = UNCERTAINTY
    test_miss: bool = True  # every rejected chain file of those formats missed on test


def formats_to_fall_back(rows: Sequence[ArtifactRow], formats: Sequence[str]) -> list[str]:
    """The requested ``formats`` in which no file derived from the chain shipped, though one was made and measured
    (a row with a validation figure); formats whose files all failed to convert or crashed their runtime are left
    out (the user's model would fail the same way)."""
    out = []
    for fmt in formats:
        own = [r for r in rows if r.format == fmt and "/" not in r.file]
        if own and not any(r.verdict.shipped for r in own) and any(r.validation is not None for r in own):
            out.append(fmt)
    return out


def fallback_step(model, ctx) -> StepOutput:
    """Export the user's folded model in each format that shipped nothing from the chain, held to the budget."""
    chain = [a for out in ctx.made for a in out.artifacts if a.format in FORMATS]
    formats = formats_to_fall_back(chain, _requested(ctx.config))
    if not formats:  # ran and found nothing to do (as fold's "nothing to fold"): done, not skipped
        return StepOutput(model, StepRecord(FALLBACK, Status.DONE, NOT_NEEDED))
    from deploykit.export.config import ExportFormat, Quantization
    from deploykit.pipeline.uncertainty_steps import conformal_export_step

    source, applied, what = folded_original(ctx)
    own = dataclasses.replace(ctx, figures=ctx.original_figures, applied=applied)  # its rows: the original's sparsity
    ctx.say(f"  nothing derived from the compressed model shipped in {', '.join(formats)}: exporting {what}")
    rows = tuple(
        row
        for fmt in formats
        for row in conformal_export_step(
            ExportFormat(fmt), Quantization.FLOAT32, source, own, file=fallback_file(fmt)
        ).artifacts
    )
    entry = describe(chain, formats, rows, what)  # its line is the step's reason: the runner says it
    return StepOutput(
        model,  # the chain's model goes on (result.model, model.keras); the MC step reads this entry (mc_source)
        StepRecord(
            FALLBACK,
            Status.DONE,
            entry.line,
            artifacts=list(entry.shipped),
            checks="; ".join(r.checks for r in rows),
            detail=entry,
        ),
        artifacts=rows,
        sections=tuple(section_lines(entry)),
    )


def _requested(config) -> list[str]:
    """The formats the run's export variants write, in their order."""
    return list(dict.fromkeys(f.value for f, _ in config.export.variants()))


def describe(chain: Sequence[ArtifactRow], formats: Sequence[str], rows: Sequence[ArtifactRow], what: str) -> Fallback:
    """The :class:`Fallback` entry: which chain files missed what, and which fallback files shipped."""
    missed = {r.file: _first_check(r) for r in chain if r.format in formats and r.verdict is Verdict.REJECTED}
    test_miss = bool(missed) and all(m.startswith("test miss") for m in missed.values())
    shipped = [r.file for r in rows if r.verdict.shipped]
    rejected = [r.file for r in rows if not r.verdict.shipped]
    by_check: dict[str, list[str]] = {}
    for file, check in missed.items():
        by_check.setdefault(check, []).append(file)
    why = "; ".join(f"{', '.join(files)}: {check}" for check, files in by_check.items())
    what_missed = (
        "the compressed model missed the budget on test"
        if test_miss
        else f"every file of the compressed model was rejected in {', '.join(formats)}"
    )
    line = f"{what_missed} ({why}); " + (
        f"shipped {what}: {', '.join(shipped)}" if shipped else f"{what} missed it too: nothing shipped"
    )
    if shipped and rejected:
        line += f" ({', '.join(rejected)} missed it too)"
    return Fallback(list(formats), missed, shipped, rejected, what, line, test_miss=test_miss)


def _first_check(row: ArtifactRow) -> str:
    """The first check a rejected row missed, without its numbers (``test miss: accuracy drop vs the original``)."""
    return row.checks.removeprefix("missed: ").split(" = ")[0].split(";")[0].strip()


def section_lines(entry: Fallback) -> list[str]:
    """report.md's section on the fallback."""
    lines = [f"## Fallback: {entry.model}", "", entry.line[0].upper() + entry.line[1:] + ".", ""]
    lines += [
        f"- The fallback files are named after `{STEM}.keras` (your model as given); the compressed model's rejected "
        "rows keep their names and what they missed in the table above.",
        f"- This choice was {entry.unbiased}.",
        f"- Not affected: {entry.uncertainty}.",
        "",
    ]
    return lines


def report_section(report: dict[str, Any], records: Sequence[StepRecord]) -> dict[str, Any]:
    """report.json with ``fallback`` (null when the step did not run or was not needed) and its line first in the
    notes (the registry's ``report`` hook of this step)."""
    entry = next((r.detail for r in records if r.step == FALLBACK and isinstance(r.detail, Fallback)), None)
    report[FALLBACK] = None if entry is None else to_jsonable(entry)
    if entry is not None:
        report["notes"] = [f"{FALLBACK}: {entry.line}", *report.get("notes", [])]
    return report
