"""The pipeline's steps: each takes the model and the run's context and returns a :class:`StepOutput`.

A pipeline is a list of :class:`Step` (see :func:`deploykit.pipeline.run.build_pipeline`). A step never mutates the
model it takes nor the context (both are read-only to it): it returns its model, its record, and what it
made (artifact rows, per-layer sparsity, the settings it tried); the runner aggregates them (the way
Olive's engine runs passes). A step switched off, or one the model does not allow (nothing to fold,
no dropout), returns a ``skipped`` record saying why. A step or artifact that misses the accuracy
budget is reported (``missed budget`` / a ``rejected`` row, its file removed) and the run goes on; a
step that finds a bug (a fold that changes the outputs) raises :class:`~deploykit.errors.StepError`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.contract import ENSEMBLE_FILE
from deploykit.data import Dataset
from deploykit.errors import ConversionError, Mismatch, StepError, UnsupportedLayerError, ValidationError
from deploykit.evaluate import Budget, Metric, RegressionErrors, main_outputs
from deploykit.export.bundle import TRITON_DIR, artifact_name
from deploykit.export.config import ExportFormat, Precision, Quantization
from deploykit.layers import Role
from deploykit.pipeline.config import OptimizeConfig
from deploykit.pipeline.records import (
    ArtifactRow,
    LayerSparsityRow,
    ModelFigures,
    Stage,
    Status,
    StepOutput,
    StepRecord,
    Try,
    Verdict,
)
from deploykit.pipeline.tables import SparsityMethod
from deploykit.task import OutputKind, Task

ORIGINAL_FILE = "original.keras"
MODEL_FILE = "model.keras"
MC_FILE = "model_mc.onnx"
ENSEMBLE_DIR = "ensemble"  # the [ensemble] step's subfolder: ensemble.onnx and its members/
BUDGET_REPEATS = 5  # latency runs per figure under a time budget


@dataclass(frozen=True)
class RunContext:
    """What a step reads about the run. Read-only: the runner makes the next one from what steps return."""

    data: Dataset
    config: OptimizeConfig
    folder: Path  # the staging folder (moved into place when the run succeeds)
    say: Callable[[str], None]
    original: Any  # the input model (never changed)
    original_figures: ModelFigures
    figures: ModelFigures  # of the current model
    applied: tuple[str, ...] = ()  # what was done so far, for the ONNX metadata ("fold_batchnorm", ...)
    keras3: bool = False  # the input was a Keras 3 file: .keras outputs are written as Keras 3 files
    task: Task = Task.CLASSIFICATION  # resolved once, when the model met the data (Dataset.check_model)
    kind: OutputKind = OutputKind.PROBABILITIES
    unsafe: bool = False  # the run may load custom code (its [ensemble] members too)
    plan: Any = (
        None  # deploykit.pipeline.budget.Plan: the time budget's clock (None: unplanned, e.g. a step called alone)
    )
    reference: Any = None  # the original's outputs on validation and test (pipeline.confirm.Reference)

    @property
    def repeats(self) -> int:
        """Timed runs per latency figure: fewer under a time budget (a large model's 50 runs take minutes)."""
        repeats = self.config.validate.latency_repeats
        return repeats if self.config.search.time_budget is None else min(repeats, BUDGET_REPEATS)

    @property
    def budget(self) -> Budget:
        """How much worse than the original model any kept model or shipped artifact may score (accuracy or RMSE)."""
        return self.config.validate.budget(self.task)

    @property
    def metric(self) -> Metric:
        return self.budget.metric

    def original_score(self) -> float:
        """The original model's test figure in the budget's metric."""
        return getattr(self.original_figures, self.metric.value)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Any, RunContext], StepOutput]


def switched_off(model, step: str) -> StepOutput:
    """The record of a step its config switched off: the model passes through unchanged."""
    return StepOutput(model, StepRecord(step, Status.SKIPPED, "switched off"))


def budget_miss(value: float | None, ctx: RunContext) -> list[Mismatch]:
    """The budget as a mismatch list: empty when ``value`` (accuracy, or a regressor's RMSE) is within it of the
    original's."""
    if value is None:
        return []
    budget, original = ctx.budget, ctx.original_score()
    if budget.within(original, value):
        return []
    what = "accuracy drop" if budget.metric is Metric.ACCURACY else "RMSE increase"
    return [
        Mismatch(
            f"{what} vs the original",
            budget.shortfall(original, value),
            f"<= {budget.limit:g} (the budget)",
            f"{budget.metric.value} {value:.4f} vs original {original:.4f}",
        )
    ]


def judge(ctx: RunContext, test_outputs, val_outputs=None):
    """(test figure, validation figure or None, budget mismatches) of a candidate's outputs against the original's.

    Decided on validation (when given), confirmed on test: see :mod:`deploykit.pipeline.confirm`.
    """
    from deploykit.pipeline.confirm import (
        TEST,
        VALIDATION,
        budget_mismatches,
        reference_outputs,
        split_figure,
    )

    ref = ctx.reference or reference_outputs(ctx.original, ctx.data, ctx.kind)
    test = split_figure(TEST, test_outputs, ref.test, ctx.data.y_test, ctx.budget)
    val = None if val_outputs is None else split_figure(VALIDATION, val_outputs, ref.val, ctx.data.y_val, ctx.budget)
    return test, val, budget_mismatches(val, test, ctx.budget) if ctx.config.validate.enabled else []


def changes(value: float | None, ctx: RunContext) -> dict[str, float | None]:
    """A row's figure and its change vs the original, under the metric's field names (accuracy or rmse)."""
    if ctx.metric is Metric.RMSE:
        original = ctx.original_figures.rmse
        return {
            "rmse": value,
            "rmse_change": None if value is None else (value - original) / original if original else 0.0,
        }
    return {"accuracy": value, "accuracy_change": None if value is None else value - ctx.original_figures.accuracy}


def verdict_for(mismatches: list, ctx: RunContext) -> Verdict:
    if not ctx.config.validate.enabled:
        return Verdict.NOT_VALIDATED
    return Verdict.REJECTED if mismatches else Verdict.PASS


def withdraw(row: ArtifactRow, ctx: RunContext) -> ArtifactRow:
    """A rejected artifact is not shipped: remove its file (its row keeps the numbers)."""
    if row.verdict is Verdict.REJECTED:
        (ctx.folder / row.file).unlink(missing_ok=True)
        ctx.say(f"  rejected {row.file}: {row.checks}")
    return row


# --- measurements ---------------------------------------------------------------------------


def model_figures(model, data: Dataset) -> ModelFigures:
    """Parameters, prunable kernel weights, sparsity, test accuracy (or a regressor's RMSE) and saved size of a
    tf_keras model."""
    from deploykit.evaluate import score
    from deploykit.sparsity.report import kernel_sparsity, model_sparsity, saved_sizes

    layers = kernel_sparsity(model, {})
    size, gz = saved_sizes(model)
    value = score(model, data.x_test, data.y_test, data.task)
    regression = data.task is Task.REGRESSION
    return ModelFigures(
        int(model.count_params()),
        sum(l.weights for l in layers),
        float(model_sparsity(layers)),
        None if regression else value,
        size,
        gz,
        rmse=value if regression else None,
    )


def describe_figure(figures: ModelFigures) -> str:
    """``test accuracy 0.9630`` / ``test RMSE 54.21``."""
    return f"test accuracy {figures.accuracy:.4f}" if figures.rmse is None else f"test RMSE {figures.rmse:.4g}"


def sparsity_rows(model, stage: str) -> tuple[LayerSparsityRow, ...]:
    from deploykit.sparsity.report import kernel_sparsity

    return tuple(LayerSparsityRow(stage, l.name, l.weights, l.zeros, l.sparsity) for l in kernel_sparsity(model, {}))


def timings(predict: Callable[[np.ndarray], Any], x: np.ndarray, repeats: int) -> tuple[float, float]:
    """(median batch-1 latency in ms, batch-256 throughput in examples/s)."""
    from deploykit.export.runtimes import median_seconds

    one, batch = x[:1], np.resize(x, (256, *x.shape[1:]))
    b1 = median_seconds(lambda: predict(one), repeats)
    b256 = median_seconds(lambda: predict(batch), max(3, repeats // 5))
    return 1000 * b1, 256 / b256


def keras_row(model, file: str, ctx: RunContext, verdict: Verdict | None, checks: str) -> ArtifactRow:
    """The row of a saved .keras model, measured in tf_keras (``model(x)`` calls); ``verdict`` None: the budget
    decides."""
    from deploykit.evaluate import outputs
    from deploykit.export.artifact import file_sizes

    size, gz = file_sizes(ctx.folder / file)
    probs = main_outputs(outputs(model, ctx.data.x_test), ctx.kind)
    reference = main_outputs(outputs(ctx.original, ctx.data.x_test), ctx.kind) if model is not ctx.original else probs
    regression = ctx.task is Task.REGRESSION
    errors = RegressionErrors.between(probs, ctx.data.y_test) if regression else None
    value = errors.rmse if regression else float(np.mean(probs.argmax(1) == ctx.data.y_test))
    own = model is ctx.original
    test, val, missed = judge(ctx, probs, None if own else main_outputs(outputs(model, ctx.data.x_val), ctx.kind))
    if verdict is None:
        verdict = verdict_for(missed, ctx)
        checks = "; ".join(map(str, missed)) if missed else checks
    b1, b256 = timings(lambda v: model(v, training=False), ctx.data.x_test, ctx.repeats)
    return ArtifactRow(
        file=file,
        format="keras",
        runtime="tf_keras",
        precision="float32",
        quantization="float32",
        sparsity=ctx.figures.sparsity,
        size_bytes=size,
        gzip_bytes=gz,
        compression=ctx.original_figures.keras_gzip_bytes / gz,
        **changes(value, ctx) | ({"accuracy": None, "accuracy_change": None} if regression else {}),
        agreement=None if regression else float(np.mean(probs.argmax(1) == reference.argmax(1))),
        max_abs_diff=float(np.abs(probs - reference).max()),
        latency_b1_ms=b1,
        throughput_b256=b256,
        verdict=verdict,
        checks=checks,
        max_abs_error=errors.max_abs_error if regression else None,
        ci95=test.ci95,
        validation=val,
    )


# --- model steps ------------------------------------------------------------------------------


def fold_step(model, ctx: RunContext) -> StepOutput:
    if not ctx.config.fold.enabled:
        return switched_off(model, "fold")
    # With an MC Dropout model to build, a BatchNorm stays where folding it would pass a Dropout: exact at
    # inference either way, but the folded shift would no longer be dropped with its unit when sampling.
    from deploykit.evaluate import output_scale, outputs
    from deploykit.fold import fold_batchnorm

    folded, report = fold_batchnorm(model, through_dropout=not ctx.config.mc.enabled)
    # a float32 rewrite rounds relative to the outputs' size: a regressor's tolerance scales with its predictions
    tolerance = ctx.config.validate.fold_tolerance * output_scale(outputs(model, ctx.data.x_test[:256]))
    checks = (
        f"max |output difference| {report.max_abs_diff:.2g} <= {tolerance:g}" if ctx.config.validate.enabled else ""
    )
    if ctx.config.validate.enabled and report.max_abs_diff > tolerance:
        raise StepError(
            f"max |output difference| = {report.max_abs_diff:.3g} between the original and folded "
            f"model, required <= {tolerance:g}",
            step="fold",
        )
    applied: tuple[str, ...] = ()
    if not report.changed:
        reason = "nothing to fold (no BatchNormalization or input standardization)"
    else:
        applied = ("fold_batchnorm",)
        reason = "folded " + ", ".join(f"{f.name} into {f.target}" for f in report.folded)
    if report.unfolded:
        reason += "; kept " + ", ".join(f"{u.name} ({u.reason})" for u in report.unfolded)
    return StepOutput(folded, StepRecord("fold", Status.DONE, reason, checks=checks, detail=report), applied=applied)


def sparsity_step(model, ctx: RunContext) -> StepOutput:
    """Search the sparsity target within the budget, or make the one configured try (``--quick``, l1)."""
    step = ctx.config.sparsity
    if not step.enabled:
        return switched_off(model, "sparsity")
    if step.searching:
        return _searched(model, ctx)
    name = f"sparsity ({step.method.value})"
    left = _prunable_left(model, step.prune if step.method is SparsityMethod.PRUNE else step.l1)
    if left:
        return StepOutput(model, StepRecord(name, Status.SKIPPED, left))
    from deploykit.sparsity import prune, sparsify_l1

    start = time.perf_counter()
    if step.method is SparsityMethod.PRUNE:
        config, stopper, skipped = _planned_prune(step, ctx)
        if skipped:
            return StepOutput(model, StepRecord(name, Status.SKIPPED, skipped))
        ctx.say(f"  pruning to {config.target_sparsity:.0%} over up to {config.epochs} epochs")
        try:  # the epochs show as a bar or the heartbeat's line, not one line each
            result, report = prune(model, ctx.data, config=config, callbacks=(stopper,) if stopper else ())
        except StepError as exc:
            if getattr(stopper, "stopped", None):  # stopped at the deadline before the schedule ended
                return StepOutput(
                    model,
                    StepRecord(
                        name, Status.MISSED, f"stopped at the time budget's deadline: {exc}; the model stays dense"
                    ),
                )
            raise
        setting, applied = f"prune {step.prune.target_sparsity:.0%}", f"prune({step.prune.target_sparsity:.2f})"
        reason = f"TF-MOT pruning: model sparsity {report.sparsity:.1%} ({report.epochs_run} epochs)"
    else:
        ctx.say(f"  l1 = {step.l1.l1:g} over up to {step.l1.epochs} epochs, then zeroing |w| < {step.l1.threshold:g}")
        result, report = sparsify_l1(model, ctx.data, config=step.l1)
        setting, applied = f"l1 {step.l1.l1:g}", f"l1({step.l1.l1:g})"
        reason = f"l1 fine-tuning then zeroing: model sparsity {report.sparsity:.1%} ({report.epochs_run} epochs)"
    from deploykit.evaluate import outputs
    from deploykit.pipeline.confirm import (
        VALIDATION,
        budget_mismatches,
        reference_outputs,
        split_figure,
    )

    ref = ctx.reference or reference_outputs(ctx.original, ctx.data, ctx.kind)
    val = split_figure(
        VALIDATION, main_outputs(outputs(result, ctx.data.x_val), ctx.kind), ref.val, ctx.data.y_val, ctx.budget
    )  # decided on validation; model.keras is confirmed on test when saved
    missed = budget_mismatches(val, None, ctx.budget) if ctx.config.validate.enabled else []
    attempt = _try_row(
        Stage.SPARSITY,
        setting,
        val.value,
        val.change,
        val.ci95,
        report.gzip_bytes_after,
        ctx,
        kept=not missed,
        note="; ".join(map(str, missed)),
        seconds=round(time.perf_counter() - start, 2),
    )
    checks = f"{ctx.budget.describe()} vs the original" if ctx.config.validate.enabled else ""
    if missed:
        return StepOutput(
            model,
            StepRecord(
                name,
                Status.MISSED,
                f"{setting} missed the budget ({missed[0]}); the model stays dense",
                checks=checks,
                detail=report,
            ),
            tries=(attempt,),
        )
    return StepOutput(
        result,
        StepRecord(name, Status.DONE, reason, checks=checks, detail=report),
        layer_sparsity=sparsity_rows(result, "after sparsity"),
        tries=(attempt,),
        applied=(applied,),
    )


def _prunable_left(model, tune) -> str:
    """Why nothing is left to prune ('' when something is): only the output layer (skipped) or no layer TF-MOT
    prunes."""
    from deploykit.graph import graph_from_model

    prunable = [n.spec.name for n in graph_from_model(model, unsafe=True).nodes if n.spec.support.prunable]
    output = prunable[-1] if prunable and tune.skip_output else None
    requested = set(getattr(tune, "layer_sparsity", None) or ())  # per-layer targets may name the output layer
    if any(n not in tune.skip_layers and (n != output or n in requested) for n in prunable):
        return ""
    return f"nothing to prune (prunable layers: {', '.join(prunable) or 'none'}; the output layer is left dense)"


def _planned_prune(step, ctx: RunContext):
    """(prune config, deadline callback or None, why the step is skipped or "") of the one try under the plan."""
    plan = ctx.plan
    if plan is None or plan.budget is None:
        return step.prune, None, ""
    if not plan.search:
        return step.prune, None, "no fine-tuning fits the time budget; the model stays dense"
    from deploykit.pipeline.budget import search_configs

    return search_configs(plan, step)[1], plan.limits.stopper(), ""


def _try_row(
    stage: Stage,
    setting: str,
    value: float | None,
    change: float | None,
    ci95: list[float] | None,
    gzip_bytes: int,
    ctx: RunContext,
    **rest,
) -> Try:
    """A try's row: its validation figure (accuracy, or a regressor's RMSE), the change vs the original, its
    interval."""
    if ctx.metric is Metric.RMSE:
        return Try(stage, setting, None, None, gzip_bytes, rmse=value, rmse_change=change, ci95=ci95, **rest)
    return Try(stage, setting, value, change, gzip_bytes, ci95=ci95, **rest)


def _searched(model, ctx: RunContext) -> StepOutput:
    """The highest target of the search within the budget; every try reported."""
    from deploykit.sparsity import search_sparsity

    step, name = ctx.config.sparsity, "sparsity (prune)"
    search, prune, limits = step.search, step.prune, None
    if ctx.plan is not None and ctx.plan.budget is not None:  # the time budget's targets, epochs, scan and deadline
        if not ctx.plan.search:
            return StepOutput(
                model, StepRecord(name, Status.SKIPPED, "no try fits the time budget; the model stays dense")
            )
        from deploykit.pipeline.budget import search_configs

        (search, prune), limits = search_configs(ctx.plan, step), ctx.plan.limits
    ctx.say(
        f"  searching the highest sparsity within the budget ({ctx.budget.describe()}): "
        + ", ".join(f"{t:.0%}" for t in search.targets)
    )
    result, report = search_sparsity(
        model,
        ctx.data,
        ctx.budget,
        config=search,
        prune_config=prune,
        progress=lambda m: ctx.say("  " + m),
        reference=ctx.original,
        limits=limits,
        ray=ctx.config.search.ray,
    )
    tries = tuple(
        _try_row(
            Stage.SPARSITY,
            t.setting(),
            getattr(t, ctx.metric.value),
            None if getattr(t, "change", None) is None else t.change.estimate,
            t.ci95,
            t.gzip_bytes,
            ctx,
            kept=t.kept,
            note=t.note,
            seconds=t.seconds,
        )
        for t in report.tries
    )
    checks = f"{ctx.budget.describe()} vs the original"
    protected = (
        "; left dense: " + ", ".join(f"{k} ({v})" for k, v in report.protected.items()) if report.protected else ""
    )
    if not report.tries:
        return StepOutput(model, StepRecord(name, Status.SKIPPED, "nothing to prune" + protected, detail=report))
    if report.kept is None:
        return StepOutput(
            model,
            StepRecord(
                name,
                Status.MISSED,
                f"no target within the budget ({len(tries)} tried); the model stays dense" + protected,
                checks=checks,
                detail=report,
            ),
            tries=tries,
        )
    kept = report.kept
    reason = (
        f"kept {kept.setting()} of {len(tries)} tried: model sparsity {kept.sparsity:.1%}, validation "
        f"{ctx.budget.change(report.original, getattr(kept, ctx.metric.value))}{protected}"
    )
    return StepOutput(
        result,
        StepRecord(name, Status.DONE, reason, checks=checks, detail=report),
        layer_sparsity=sparsity_rows(result, "after sparsity"),
        tries=tries,
        applied=(f"prune({kept.target:.2f})",),
    )


def compact_step(model, ctx: RunContext) -> StepOutput:
    if not ctx.config.compact.enabled:
        return switched_off(model, "compact")
    from deploykit.sparsity import compact

    result, report = compact(model, ctx.data, tolerance=ctx.config.compact.tolerance)
    applied: tuple[str, ...] = ()
    if report.neurons_removed:
        applied = ("compact",)
        reason = f"removed {report.neurons_removed} dead neurons or channels; MACs {report.macs_ratio:.1%} of before"
    else:
        reason = "no dead neurons to remove"
    checks = (
        f"max |output difference| {report.max_abs_diff:.2g} <= {ctx.config.compact.tolerance:g}"
        if report.max_abs_diff is not None
        else ""
    )
    return StepOutput(result, StepRecord("compact", Status.DONE, reason, checks=checks, detail=report), applied=applied)


def save_step(model, ctx: RunContext) -> StepOutput:
    """Save the optimized model (the source of every artifact; Keras 3 when the input was) and measure it."""
    from deploykit.io import save_model_like

    save_model_like(model, ctx.folder / MODEL_FILE, ctx.keras3)
    row = withdraw(keras_row(model, MODEL_FILE, ctx, None, "the exported model itself; within the budget"), ctx)
    kind = "Keras 3" if ctx.keras3 else "tf_keras"
    return StepOutput(
        model,
        StepRecord("save model", Status.DONE, f"optimized {kind} model: {MODEL_FILE}", artifacts=[MODEL_FILE]),
        artifacts=(row,),
        layer_sparsity=sparsity_rows(model, "exported"),
    )


# --- artifacts ----------------------------------------------------------------------------------


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


def export_step(fmt: ExportFormat, quant: Quantization, model, ctx: RunContext) -> StepOutput:
    """One artifact through the exporter's own ``export_variant``, measured and held to the budget in its runtime."""
    if quant.precision is Precision.INT8:
        return _int8_export(fmt, quant, model, ctx)
    from deploykit.export import export_variant

    step = ctx.config.export
    file = artifact_name(fmt, quant)
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
    from deploykit.graph import graph_from_model
    from deploykit.pipeline.int8_search import chosen, export_int8, int8_variants, raw_scales, search_int8

    step = ctx.config.export
    taken = {q for f, q in step.variants() if f is fmt}  # variants requested on their own are not fallbacks
    prunable = [n for n in graph_from_model(model, unsafe=True).nodes if n.spec.support.prunable]
    variants = int8_variants(
        fmt,
        quant,
        _knobs(ctx),
        [n.name for n in prunable],
        taken - {quant},
        dense_first=bool(prunable) and prunable[0].spec.support.role is Role.DENSE,
        raw_scales=raw_scales(ctx.data.feature_var),
    )
    start = time.perf_counter()

    def make(variant):
        ctx.say(f"  trying {variant.describe()}")
        return export_int8(
            variant, model, ctx.folder, ctx.data, opset=step.opset, metadata=metadata(model, ctx, ctx.figures.accuracy)
        )

    made = {}  # the last record of each file: the passing attempt is the last one made (the search stops there)

    def measure(record):  # decided on the validation split
        made[record.path.name] = record
        return _measure_artifact(record, record.path.name, model, ctx, validation=True)

    attempts = search_int8(variants, make, measure, allowed=_fits_plan(ctx))
    kept = chosen(attempts)
    for attempt in attempts:  # one file per variant: only the chosen one's stays (and only if it passed)
        if attempt.variant.file != kept.variant.file:
            (ctx.folder / attempt.variant.file).unlink(missing_ok=True)
    tries = tuple(
        _try_row(
            Stage.INT8,
            a.variant.describe(),
            a.row.validation.value if a.row and a.row.validation else None,
            a.row.validation.change if a.row and a.row.validation else None,
            a.row.validation.ci95 if a.row and a.row.validation else None,
            a.row.gzip_bytes if a.row else 0,
            ctx,
            kept=a is kept and a.passed,
            note=a.error or (a.row.checks if not a.passed else ""),
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


def _fits_plan(ctx: RunContext):
    """Whether one more int8 setting fits the time budget (always, without one)."""
    if ctx.plan is None or ctx.plan.budget is None:
        return lambda variant: True
    return lambda variant: ctx.plan.fits(ctx.plan.export_seconds(variant.quantization))


def _unmade(file: str, fmt: ExportFormat, error: str, ctx: RunContext, precision: str = "int8") -> ArtifactRow:
    """The row of an artifact no variant of which could be exported (rejected, no numbers)."""
    (ctx.folder / file).unlink(missing_ok=True)
    return ArtifactRow(
        file=file,
        format=fmt.value,
        runtime=fmt.runtime,
        precision=precision,
        quantization="—",
        sparsity=ctx.figures.sparsity,
        size_bytes=0,
        gzip_bytes=0,
        compression=0.0,
        accuracy=None,
        accuracy_change=None,
        agreement=None,
        max_abs_diff=None,
        latency_b1_ms=None,
        throughput_b256=None,
        verdict=Verdict.REJECTED,
        checks=f"export failed: {error}",
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
    missed = [*report.mismatches, *budget]
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
    )


def _crashed(record, file: str, exc: ValidationError, ctx: RunContext) -> ArtifactRow:
    """The rejected row of an artifact its runtime could not load or run."""
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
        accuracy=None,
        accuracy_change=None,
        agreement=None,
        max_abs_diff=None,
        latency_b1_ms=None,
        throughput_b256=None,
        verdict=Verdict.REJECTED,
        checks=str(exc).replace(f"{ctx.folder}/", ""),
        detail=exc.report,
    )


def triton_step(model, ctx: RunContext) -> StepOutput:
    """A Triton repository of every shipped ONNX model (the MC model and the ensemble included) and a KServe
    manifest beside it."""
    from deploykit.export import write_triton_models

    # what is shipped (rejected artifacts were removed), the [ensemble] step's model included
    files = sorted(p for p in ctx.folder.glob("*.onnx")) + sorted((ctx.folder / ENSEMBLE_DIR).glob(ENSEMBLE_FILE))
    if not files:
        return StepOutput(
            model, StepRecord("triton", Status.SKIPPED, "no ONNX model to serve (export onnx or the MC model)")
        )
    names = write_triton_models(
        files,
        ctx.folder / TRITON_DIR,
        ctx.config.export.triton,
        class_names=list(ctx.data.class_names) if ctx.task is Task.CLASSIFICATION else None,
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


def timed(step: Step, model, ctx: RunContext) -> StepOutput:
    """Run one step; time it, and measure the model before and after when it changed the model."""
    start = time.perf_counter()
    try:
        out = step.run(model, ctx)
    except UnsupportedLayerError as exc:  # the step cannot apply to this model's layers: skip it, the run goes on
        out = StepOutput(model, StepRecord(step.name, Status.SKIPPED, str(exc)))
    record = dataclasses.replace(out.record, seconds=round(time.perf_counter() - start, 2))
    if record.status is Status.DONE and out.model is not model:
        from deploykit.evaluate import outputs
        from deploykit.pipeline.confirm import change

        _, ci = change(
            outputs(out.model, ctx.data.x_test), outputs(model, ctx.data.x_test), ctx.data.y_test, ctx.metric
        )
        record = dataclasses.replace(
            record, before=ctx.figures, after=model_figures(out.model, ctx.data), ci95=ci.as_list()
        )
    return dataclasses.replace(out, record=record)
