"""The pipeline's artifact steps: one export per format x quantization (an int8 one searching its settings within
the budget), each measured in its runtime and held to the budget, and the Triton repository of what shipped.
"""

from __future__ import annotations

import dataclasses
import time

from deploykit.core.contract import ENSEMBLE_FILE
from deploykit.core.evaluate import Metric
from deploykit.core.layers import Role
from deploykit.core.task import Task
from deploykit.errors import ConversionError, ValidationError
from deploykit.export.bundle import TRITON_DIR, artifact_name
from deploykit.export.config import ExportFormat, Precision, Quantization
from deploykit.pipeline.context import (
    ENSEMBLE_DIR,
    RunContext,
    changes,
    judge,
    try_row,
    verdict_for,
    withdraw,
)
from deploykit.pipeline.nll import artifact_nll
from deploykit.pipeline.records import ArtifactRow, Stage, Status, StepOutput, StepRecord, Verdict


def metadata(model, ctx: RunContext, accuracy: float | None):
    from deploykit.export.metadata import ModelMetadata

    return ModelMetadata(
        class_names=list(ctx.data.class_names),
        input_shape=[int(d) for d in model.input_shape[1:]],
        steps=list(ctx.applied),
        sparsity=round(ctx.figures.sparsity, 6),
        reference_accuracy=accuracy,
        task=ModelMetadata.task_entry(ctx.task, ctx.kind),
    )


def export_step(fmt: ExportFormat, quant: Quantization, model, ctx: RunContext, file: str | None = None) -> StepOutput:
    """One artifact through the exporter's own ``export_variant``, measured and held to the budget in its runtime;
    ``file``: another name than :func:`artifact_name`'s (the fallback's ``original.onnx``; float variants only)."""
    if quant.precision is Precision.INT8:
        return _int8_export(fmt, quant, model, ctx)
    from deploykit.export import export_variant

    step = ctx.config.export
    file = file or artifact_name(fmt, quant)
    try:
        record = export_variant(
            model,
            fmt,
            quant,
            ctx.folder / file,
            ctx.data,
            config=_knobs(ctx),
            opset=step.opset,
            metadata=metadata(model, ctx, ctx.figures.accuracy),
            task=ctx.task,
        )
    except ConversionError as exc:  # this format's converter refused the model: its row is rejected, the run goes on
        row = _unmade(file, fmt, str(exc), ctx, precision=quant.precision.value)
        ctx.say(f"  rejected {file}: {exc}")
        return StepOutput(
            model,
            StepRecord(f"export {fmt.value} {quant.value}", Status.DONE, f"{file} (rejected)", checks=row.checks),
            artifacts=(row,),
        )
    row = withdraw(
        _confirmed(record, file, model, ctx, _measure_artifact(record, file, model, ctx, validation=True)), ctx
    )
    return StepOutput(
        model,
        StepRecord(
            f"export {fmt.value} {quant.value}",
            Status.DONE,
            f"{file} ({fmt.value} {quant.value}, {row.verdict.value})",
            artifacts=[file] if row.verdict.shipped else [],
            checks=row.checks,
            detail=record,
        ),
        artifacts=(row,),
    )


def _knobs(ctx: RunContext):
    """The run's int8 knobs; ``--no-fold`` reaches the int8 preparation too (it folds nothing then)."""
    knobs = ctx.config.export.quantization
    return dataclasses.replace(knobs, fold=knobs.fold and ctx.config.fold.enabled)


def _int8_export(fmt: ExportFormat, quant: Quantization, model, ctx: RunContext) -> StepOutput:
    """One requested int8 variant: the first setting within the budget (see int8_search), each try reported."""
    from deploykit.core.graph import graph_from_model
    from deploykit.export.int8_fallback import layer_kernels, rank_candidates
    from deploykit.export.int8_prep import standardization_target
    from deploykit.pipeline.int8_search import chosen, export_int8, int8_variants, raw_scales, search_int8

    step = ctx.config.export
    taken = {q for f, q in step.variants() if f is fmt}  # variants requested on their own are not fallbacks
    graph = graph_from_model(model, unsafe=True)
    prunable = [n for n in graph.nodes if n.spec.support.prunable]
    variants = int8_variants(
        fmt,
        quant,
        _knobs(ctx),
        [n.name for n in prunable],
        taken - {quant},
        dense_first=standardization_target(graph) is not None,
        raw_scales=raw_scales(ctx.data.feature_var),
        convolutions=any(n.spec.support.role is Role.CONV for n in prunable),
        ranked=rank_candidates(layer_kernels(model, [n.name for n in prunable])),
        quantization_aware=_qat_tuning(ctx),
    )
    start = time.perf_counter()

    def make(variant):
        ctx.say(f"  trying {variant.describe()}")
        return export_int8(
            _taught(variant, ctx),
            model,
            ctx.folder,
            ctx.data,
            opset=step.opset,
            metadata=metadata(model, ctx, ctx.figures.accuracy),
        )

    made = {}  # the last record of each file: the passing attempt is the last one made (the search stops there)

    def measure(record):  # decided on the validation split
        made[record.path.name] = record
        return _measure_artifact(record, record.path.name, model, ctx, validation=True)

    if ctx.config.plan.ray is None:
        attempts = search_int8(variants, make, measure, allowed=_fits_plan(ctx))
    else:  # the fallbacks as Ray tasks: the same attempts, decided here in the same order
        from deploykit.pipeline.ray_work import search_int8_on_ray

        options = {"opset": step.opset, "metadata": metadata(model, ctx, ctx.figures.accuracy)}
        attempts = search_int8_on_ray(
            [_taught(v, ctx) if i else v for i, v in enumerate(variants)],  # a task cannot reach the original
            make,
            measure,
            _fits_plan(ctx),
            export_int8,
            model,
            ctx.folder,
            ctx.data,
            options,
            ctx.config.plan.ray,
            ctx.say,
        )
    kept = chosen(attempts)
    for attempt in attempts:  # one file per variant: only the chosen one's stays (and only if it passed)
        if attempt.variant.file != kept.variant.file:
            (ctx.folder / attempt.variant.file).unlink(missing_ok=True)
    tries = tuple(
        try_row(
            Stage.INT8,
            a.variant.describe(),
            a.row.validation.value if a.row and a.row.validation else None,
            a.row.validation.change if a.row and a.row.validation else None,
            a.row.validation.ci95 if a.row and a.row.validation else None,
            a.row.gzip_bytes if a.row else 0,
            ctx,
            kept=a is kept and a.passed,
            note="; ".join(n for n in (a.error or (a.row.checks if not a.passed else ""), a.where) if n),
        )
        for a in attempts
    )
    file = kept.variant.file
    row = (
        _unmade(file, fmt, kept.error, ctx)
        if kept.row is None
        else withdraw(_confirmed(made[file], file, model, ctx, kept.row), ctx)
    )
    used = kept.variant.describe() + (f" after {len(attempts) - 1} other setting(s)" if len(attempts) > 1 else "")
    reason = f"{file} ({used}, {row.verdict.value})"
    return StepOutput(
        model,
        StepRecord(
            f"export {fmt.value} {quant.value}",
            Status.DONE,
            reason,
            seconds=round(time.perf_counter() - start, 2),
            artifacts=[file] if row.verdict.shipped else [],
            checks=row.checks,
            detail=row.detail,
        ),
        artifacts=(row,),
        tries=tries,
    )


def _qat_tuning(ctx: RunContext):
    """The quantization-aware rung's fine-tune (the sparsity fine-tune's, bounded), or None when switched off."""
    if not ctx.config.export.quantization_aware:
        return None
    from deploykit.export.qat import bounded

    return bounded(ctx.config.sparsity.prune)


def _taught(variant, ctx: RunContext):
    """A quantization-aware try with its soft targets, the original model's outputs (as the magnitude search
    distils), computed when the try is reached; any other try as it is."""
    tuning = variant.tuning
    if tuning is None or not tuning.config.distill or tuning.teacher is not None:
        return variant
    from deploykit.sparsity.tuning import teacher_of

    return dataclasses.replace(variant, tuning=dataclasses.replace(tuning, teacher=teacher_of(ctx.original, ctx.data)))


def _fits_plan(ctx: RunContext):
    """Whether one more int8 setting fits the time budget (always, without one); a quantization-aware one
    counts its fine-tune too."""
    if ctx.plan is None or ctx.plan.budget is None:
        return lambda variant: True
    from deploykit.export.qat import QAT_STEP_COST

    def seconds(variant) -> float:
        tune = 0.0 if variant.tuning is None else QAT_STEP_COST * variant.tuning.config.epochs * ctx.plan.costs.epoch
        return ctx.plan.export_seconds(variant.quantization) + tune

    return lambda variant: ctx.plan.fits(seconds(variant))


def _unmade(file: str, fmt: ExportFormat, error: str, ctx: RunContext, precision: str = "int8") -> ArtifactRow:
    """The row of an artifact no variant of which could be exported (rejected, no numbers)."""
    (ctx.folder / file).unlink(missing_ok=True)
    return _rejected(file, fmt, precision, "—", 0, 0, f"export failed: {error}", ctx)


def _rejected(
    file: str,
    fmt: ExportFormat,
    precision: str,
    quantization: str,
    size: int,
    gzip: int,
    checks: str,
    ctx: RunContext,
    detail=None,
) -> ArtifactRow:
    """The row of an artifact rejected before it was measured: its size (if made) and why, no figures."""
    return ArtifactRow(
        file=file,
        format=fmt.value,
        runtime=fmt.runtime,
        precision=precision,
        quantization=quantization,
        sparsity=ctx.figures.sparsity,
        size_bytes=size,
        gzip_bytes=gzip,
        compression=ctx.original_figures.keras_gzip_bytes / gzip if gzip else 0.0,
        accuracy=None,
        accuracy_change=None,
        agreement=None,
        max_abs_diff=None,
        latency_b1_ms=None,
        throughput_b256=None,
        verdict=Verdict.REJECTED,
        checks=checks,
        detail=detail,
    )


def _confirmed(record, file: str, model, ctx: RunContext, decided: ArtifactRow) -> ArtifactRow:
    """The test row of an artifact accepted on validation (``decided``), or ``decided`` itself, its split's figures
    moved out of the test columns, when validation rejected it (the test split is not looked at then)."""
    if decided.verdict is Verdict.REJECTED or decided.validation is None:
        return dataclasses.replace(decided, accuracy=None, accuracy_change=None, rmse=None, rmse_change=None, ci95=None)
    return _measure_artifact(record, file, model, ctx, decided=decided.validation)


def _measure_artifact(record, file: str, model, ctx: RunContext, validation: bool = False, decided=None) -> ArtifactRow:
    """Measure the artifact in its runtime and hold it to its tolerance and the budget (rejected if it misses).

    ``validation``: on the validation split (a decision: one timed run per batch size); else on the test split,
    with ``decided`` the validation figure that accepted it (a miss on test is then a test miss). A
    ValidationError from ``validate`` itself (the runtime could not load or run the file, e.g. a native crash
    contained in a child process) rejects this artifact; the run goes on.
    """
    from deploykit.export import validate
    from deploykit.pipeline.confirm import (
        VALIDATION,
        budget_mismatches,
        reference_outputs,
        split_figure,
        validation_view,
    )

    try:
        report = validate(
            record,
            validation_view(ctx.data) if validation else ctx.data,
            reference=model,
            repeats=1 if validation else ctx.repeats,
            batch_sizes=(1,) if validation else (1, 256),
            check=False,
            tolerance=ctx.config.validate.tolerance_for(record.precision.value, ctx.task),
        )
    except ValidationError as exc:
        return _crashed(record, file, exc, ctx)
    if validation:
        ref = ctx.reference or reference_outputs(ctx.original, ctx.data, ctx.kind)
        val = split_figure(VALIDATION, report.outputs, ref.val, ctx.data.y_val, ctx.budget)
        test, budget = None, budget_mismatches(val, None, ctx.budget) if ctx.config.validate.enabled else []
    else:
        test, _, _ = judge(ctx, report.outputs)
        val, budget = decided, budget_mismatches(decided, test, ctx.budget) if ctx.config.validate.enabled else []
    value = (test or val).value
    nll_figures, nll_missed = artifact_nll(report.outputs, model, ctx, test is None)
    if test is None and nll_figures:
        val = dataclasses.replace(val, **nll_figures)
    missed = [*report.mismatches, *budget, *nll_missed]
    verdict = verdict_for(missed, ctx)
    if verdict is Verdict.REJECTED:
        checks = "missed: " + "; ".join(map(str, missed))
    elif ctx.config.validate.enabled:
        where = "on validation" if test is None else "accepted on validation, confirmed on test"
        checks = f"{report.tolerance.describe()}; {ctx.budget.describe()} ({where})"
    else:
        checks = "validation switched off" + ("" if not missed else " (missed: " + "; ".join(map(str, missed)) + ")")
    figures = (
        changes(value, ctx)
        if test is not None
        else {"rmse": val.value, "rmse_change": val.change}
        if ctx.metric is Metric.RMSE
        else {"accuracy": val.value, "accuracy_change": val.change}
    )
    return ArtifactRow(
        file=file,
        format=record.format.value,
        runtime=record.format.runtime,
        precision=record.precision.value,
        quantization=record.quantization.value,
        sparsity=ctx.figures.sparsity,
        size_bytes=record.size_bytes,
        gzip_bytes=record.gzip_bytes,
        compression=ctx.original_figures.keras_gzip_bytes / record.gzip_bytes,
        accuracy=figures.pop("accuracy", None),
        accuracy_change=figures.pop("accuracy_change", None),
        agreement=report.agreement,
        max_abs_diff=report.max_abs_diff,
        latency_b1_ms=report.latency_b1_ms,
        throughput_b256=report.throughput_b256,
        verdict=verdict,
        checks=checks,
        detail=report,
        **figures,
        max_abs_error=None if report.target_errors is None else report.target_errors.max_abs_error,
        ci95=(test or val).ci95,
        validation=val,
        **({} if test is None else nll_figures),
    )


def _crashed(record, file: str, exc: ValidationError, ctx: RunContext) -> ArtifactRow:
    """The rejected row of an artifact its runtime could not load or run."""
    checks = str(exc).replace(f"{ctx.folder}/", "")
    return _rejected(
        file,
        record.format,
        record.precision.value,
        record.quantization.value,
        record.size_bytes,
        record.gzip_bytes,
        checks,
        ctx,
        detail=exc.report,
    )


def triton_step(model, ctx: RunContext) -> StepOutput:
    """A Triton repository of every shipped ONNX model (the MC model and the ensemble included) and a KServe
    manifest beside it."""
    from deploykit.export import write_triton_models

    # what the earlier steps shipped (their records say so; rejected artifacts are not there), the ensemble included
    onnx = [f for f in ctx.shipped if f.endswith(".onnx")]
    files = [ctx.folder / f for f in sorted(f for f in onnx if "/" not in f)]
    files += [ctx.folder / f for f in onnx if f == f"{ENSEMBLE_DIR}/{ENSEMBLE_FILE}"]
    if not files:
        return StepOutput(
            model, StepRecord("triton", Status.SKIPPED, "no ONNX model to serve (export onnx or the MC model)")
        )
    from deploykit.export import write_triton_repository
    from deploykit.pipeline.objective import triton_alias

    labels = list(ctx.data.class_names) if ctx.task is Task.CLASSIFICATION else None
    names = write_triton_models(files, ctx.folder / TRITON_DIR, ctx.config.export.triton, class_names=labels)
    names += triton_alias(  # `recommended`: the fastest shipped ONNX model, under one name
        ctx,
        lambda path, name: write_triton_repository(
            path, ctx.folder / TRITON_DIR, name, config=ctx.config.export.triton, class_names=labels
        ),
    )
    return StepOutput(
        model,
        StepRecord(
            "triton",
            Status.DONE,
            f"Triton repository {TRITON_DIR}/ ({', '.join(names)}) and kserve.yaml",
            artifacts=[f"{TRITON_DIR}/{n}" for n in names] + ["kserve.yaml"],
        ),
    )
