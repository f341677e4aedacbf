"""The pipeline's uncertainty steps: the MC Dropout model and the ``[ensemble]`` deep ensemble.

Each builds its model through the same function as its command (``mc_bundle`` for ``deploykit mc``,
``optimize_ensemble`` for ``deploykit ensemble``), then measures it as one artifact row held to the run's
budget (:func:`_held_row`): the MC mean's or the ensemble's accuracy, or a regressor's RMSE.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.contract import ENSEMBLE_FILE
from deploykit.core.evaluate import RegressionErrors, main_outputs
from deploykit.core.task import Task
from deploykit.errors import StepError, UsageError
from deploykit.pipeline.context import (
    ENSEMBLE_DIR,
    MC_FILE,
    RunContext,
    budget_miss,
    changes,
    judge,
    switched_off,
    timings,
    verdict_for,
    withdraw,
)
from deploykit.pipeline.ensemble import Optimize, load_member, optimize_ensemble
from deploykit.pipeline.export_steps import export_step, metadata
from deploykit.pipeline.nll import held_nll
from deploykit.pipeline.plots import RELIABILITY_PLOT
from deploykit.pipeline.records import ArtifactRow, Status, StepOutput, StepRecord, Verdict


def mc_step(model, ctx: RunContext) -> StepOutput:
    """The MC Dropout model through :func:`~deploykit.uncertainty.bundle.mc_bundle` (as ``deploykit mc``), held to
    the budget."""
    step = ctx.config.mc
    if not step.enabled:
        return switched_off(model, "mc dropout")
    from deploykit.core.evaluate import outputs
    from deploykit.core.graph import graph_from_model
    from deploykit.export.runtimes import OnnxRunner, predict_batches
    from deploykit.pipeline.fallback_source import mc_source
    from deploykit.uncertainty import MCConfig, UncertaintyPredictor
    from deploykit.uncertainty.bundle import mc_bundle
    from deploykit.uncertainty.mc_graph import check_has_dropout
    from deploykit.uncertainty.ood import load_ood

    chain = model  # the run's model goes on to the next steps and to result.model
    model, ctx = mc_source(chain, ctx)  # your folded model instead where the ONNX fallback shipped it
    try:
        check_has_dropout(graph_from_model(model, unsafe=True))  # loaded already: reading it runs no code
    except UsageError as exc:
        return StepOutput(chain, StepRecord("mc dropout", Status.SKIPPED, str(exc)))
    path = ctx.folder / MC_FILE
    raw = outputs(model, ctx.data.x_test)  # mc_bundle takes the model's own outputs (logits, a binary head's p)
    deterministic = main_outputs(raw, ctx.kind)  # the MC step compares probabilities
    regression = ctx.task is Task.REGRESSION
    det_accuracy = None if regression else float(np.mean(deterministic.argmax(1) == ctx.data.y_test))
    ood = load_ood(ctx.config.input.ood_data) if ctx.config.input.ood_data else None
    bundle = mc_bundle(
        model,
        ctx.data,
        path,
        MCConfig(samples=step.samples, seed=step.seed, mask=step.mask),
        temperature=step.temperature,
        target=step.selective_target(),
        ood=ood,  # a regressor: its std scale
        conformal=ctx.config.conformal.config(),
        deterministic=raw,
        metadata=metadata(model, ctx, det_accuracy),
        say=lambda m: ctx.say("  " + m),
    )
    record, comparison = bundle.export, bundle.comparison
    if regression:
        runner = OnnxRunner(path)
        predicted = predict_batches(runner.predict, ctx.data.x_test)
        errors = RegressionErrors.between(predicted, ctx.data.y_test)
        row = _held_row(
            path,
            MC_FILE,
            "onnx-mc",
            "float32",
            ctx,
            errors.rmse,
            None,
            runner.predict,
            record,
            "MC mean",
            max_abs_error=errors.max_abs_error,
            test_outputs=predicted,
        )
        m = comparison.mc
        what = (
            f"T = {step.samples} samples: test RMSE of the mean {errors.rmse:.4g}; central 95% interval covers "
            f"{100 * m.coverage_95:.1f}% (90%: {100 * m.coverage_90:.1f}%), Gaussian NLL {m.nll:.4g}"
        )
    else:
        predictor = UncertaintyPredictor(path)
        agreement = float(np.mean(bundle.predicted_class == deterministic.argmax(1)))
        row = _held_row(
            path,
            MC_FILE,
            "onnx-mc",
            record.quantization,
            ctx,
            comparison.mc.accuracy,
            agreement,
            predictor.predict,
            record,
            "MC accuracy",
            test_outputs=_one_hot(bundle.predicted_class, ctx),
            probabilities=bundle.prediction,
        )
        what = f"T = {step.samples} samples over {', '.join(record.dropout_layers)}"
    row = withdraw(row, ctx)
    files = [MC_FILE, *comparison.plots] if row.verdict.shipped else list(comparison.plots)
    return StepOutput(
        chain,
        StepRecord(
            "mc dropout",
            Status.DONE,
            f"{what}{_extras(comparison)} ({row.verdict.value})",
            artifacts=files,
            checks=row.checks,
            detail={"export": record, "comparison": comparison},
        ),
        artifacts=(row,),
        mc=comparison,
        plots=(RELIABILITY_PLOT,) if ctx.task is Task.CLASSIFICATION else (),  # a regressor's has no diagram
    )


def ensemble_step(optimize: Optimize, model, ctx: RunContext) -> StepOutput:
    """``[ensemble] members``: the run's original model and those files as a deep ensemble (each through this run's
    own sparsity and int8-dynamic export), calibrated and thresholded like the MC model, held to the budget."""
    import dataclasses

    from deploykit.pipeline.tables import EnsembleStep, SearchPlan
    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.ood import load_ood

    step, config = ctx.config.ensemble, ctx.config
    others = [load_member(file, ctx.data, ctx.unsafe) for file in step.members]
    members_config = dataclasses.replace(
        config, ensemble=EnsembleStep(), input=dataclasses.replace(config.input, ood_data=None), plan=SearchPlan()
    )  # the members share what is left of the run's budget
    budget = {} if ctx.plan is None or ctx.plan.budget is None else {"time_budget": max(0.05, ctx.plan.left() / 60)}
    try:
        run = optimize_ensemble(
            optimize,
            [ctx.original, *others],
            ctx.data,
            ctx.folder / ENSEMBLE_DIR,
            mc_samples=step.mc_samples,
            temperature=config.mc.temperature,
            target=config.mc.selective_target(),
            conformal=config.conformal.config(),
            ood=load_ood(config.input.ood_data) if config.input.ood_data else None,
            say=ctx.say,
            config=members_config,
            triton=False,
            keras3=ctx.keras3,
            ray=config.plan.ray,  # the members as Ray tasks when the run's work is on Ray
            **budget,
        )
    except StepError as exc:  # a member with no int8 model within the budget: no ensemble; the run's artifacts stand
        shutil.rmtree(ctx.folder / ENSEMBLE_DIR, ignore_errors=True)
        return StepOutput(model, StepRecord("ensemble", Status.MISSED, str(exc)))
    path, file, comparison = run.bundle.export.path, f"{ENSEMBLE_DIR}/{ENSEMBLE_FILE}", run.bundle.comparison
    regression = ctx.task is Task.REGRESSION
    value = comparison.mc.rmse if regression else comparison.mc.accuracy
    agreement = None if regression else float(np.mean(run.bundle.predicted_class == _predicted(model, ctx)))
    row = _held_row(
        path,
        file,
        "onnx-ensemble",
        "int8-dynamic",
        ctx,
        value,
        agreement,
        UncertaintyPredictor(path).predict,
        run.bundle.export,
        "ensemble",
        sparsity=_members_sparsity(run.members),
        test_outputs=None if regression else _one_hot(run.bundle.predicted_class, ctx),
        probabilities=None if regression else run.bundle.prediction,
    )
    if row.verdict is Verdict.REJECTED:
        shutil.rmtree(ctx.folder / ENSEMBLE_DIR)  # a rejected ensemble is not shipped: nothing of it is left
        ctx.say(f"  rejected {file}: {row.checks}")
    s = run.sizes
    reason = (
        f"{s.members} members{f', MC Dropout inside (T = {step.mc_samples} each)' if step.mc_samples else ''}: "
        f"{s.ensemble_gzip / s.original_gzip:.2f}x the original's gzip size; {comparison.method} "
        f"{'RMSE' if regression else 'accuracy'} {value:.4g}{_extras(comparison)} ({row.verdict.value})"
    )
    files = [file, *(f"{ENSEMBLE_DIR}/{p}" for p in comparison.plots)] if row.verdict.shipped else []
    return StepOutput(
        model,
        StepRecord(
            "ensemble",
            Status.DONE,
            reason,
            artifacts=files,
            checks=row.checks,
            detail={"sizes": s, "comparison": comparison},
        ),
        artifacts=(row,),
        sections=tuple(ensemble_lines(s, comparison)),
    )


def ensemble_lines(s, comparison) -> list[str]:
    """The [ensemble] step's sizes and comparison (the text ``deploykit ensemble`` writes), one heading level down."""
    title, *rest = comparison.to_markdown().splitlines()
    lines = [
        title.replace("# ", "## ", 1),
        "",
        f"`{ENSEMBLE_DIR}/`: {s.members} int8 members, {s.ensemble_gzip:,} B gzip in one ONNX model against "
        f"{s.original_gzip:,} B for one float32 original ({s.ensemble_gzip / s.original_gzip:.2f}x). The "
        "deterministic column is the first member alone.",
    ]
    lines += [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in rest]
    return lines + ["", *(f"![{p}]({ENSEMBLE_DIR}/{p})" for p in comparison.plots), ""]


def variant_steps(config, plan) -> list[tuple[str, Callable]]:
    """The export step as one step per format x quantization (most wanted first under a time budget), or one
    that records it is switched off."""
    import functools

    variants = config.export.variants()
    if plan is not None and plan.budget is not None:
        from deploykit.pipeline.budget import priority

        variants = priority(variants)
    if not variants:
        return [("export", lambda model, ctx: switched_off(model, "export"))]
    return [(f"export {f.value} {q.value}", functools.partial(conformal_export_step, f, q)) for f, q in variants]


def conformal_export_step(fmt, quant, model, ctx: RunContext, file: str | None = None) -> StepOutput:
    """:func:`~deploykit.pipeline.steps.export_step`, then (``[conformal] coverage``) the conformal outputs
    in the shipped ONNX file, calibrated on the validation split after its temperature; the row's size is re-measured
    and its checks say the test split's coverage. Predictions are untouched, so the validated figures stand.
    ``file``: the artifact's name when not the variant's own (the fallback's ``original.onnx``)."""
    out = export_step(fmt, quant, model, ctx, file)  # the temperature is in the model already (pipeline.calibrate)
    config = ctx.config.conformal.config()
    row = out.artifacts[0] if out.artifacts else None
    if config is None or row is None or not row.verdict.shipped or not row.file.endswith(".onnx"):
        return out
    import dataclasses

    import onnx

    from deploykit.export.artifact import file_sizes
    from deploykit.uncertainty.conformal_step import deterministic_conformal

    try:
        report = deterministic_conformal(ctx.folder / row.file, config, ctx.data, say=lambda m: ctx.say("  " + m))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UsageError) as exc:  # e.g. float16
        note = f"conformal outputs not stored ({' '.join(str(exc).split())[:120]})"
        return dataclasses.replace(out, artifacts=(dataclasses.replace(row, checks=f"{row.checks}; {note}"),))
    cal, test = report.calibration, report.test
    size = f"mean width {test.mean_width:.3g}" if cal.regression else f"mean set size {test.mean_set_size:.2f}"
    note = f"conformal {cal.method.value} at {cal.coverage:.0%}: test coverage {test.coverage:.1%}, {size}"
    size_bytes, gz = file_sizes(ctx.folder / row.file)
    row = dataclasses.replace(
        row,
        size_bytes=size_bytes,
        gzip_bytes=gz,
        checks=f"{row.checks}; {note}",
        compression=ctx.original_figures.keras_gzip_bytes / gz,
    )
    record = dataclasses.replace(
        out.record,
        reason=f"{out.record.reason}; {note}",
        checks=row.checks,
        detail={"export": out.record.detail, "conformal": report},
    )
    return dataclasses.replace(out, record=record, artifacts=(row,))


def _held_row(
    path: Path,
    file: str,
    fmt: str,
    quantization: str,
    ctx: RunContext,
    value: float,
    agreement: float | None,
    predict: Callable[[np.ndarray], Any],
    detail,
    what: str,
    sparsity: float | None = None,
    test_outputs: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    **extra,
) -> ArtifactRow:
    """An uncertainty model's row: its test figure (accuracy, or a regressor's RMSE) held to the budget, its size
    and its speed through ``predict``; ``test_outputs`` (its predictions, or one-hot classes) give the paired interval;
    a classifier's test mean ``probabilities`` hold it to the run's NLL budget too (``nll.held_nll``).

    Its choices (temperature placement, threshold) were made on validation; its test figure confirms it once.
    """
    from deploykit.export.artifact import file_sizes

    test, missed = None, budget_miss(value, ctx)
    if test_outputs is not None:
        test, _, missed = judge(ctx, test_outputs)
    nll_figures, nll_missed = held_nll(probabilities, ctx)
    missed = [*missed, *nll_missed]
    verdict = verdict_for(missed, ctx)
    checks = (
        "missed: " + "; ".join(map(str, missed))
        if verdict is Verdict.REJECTED
        else f"{what}: {ctx.budget.describe()} vs the original"
        if ctx.config.validate.enabled
        else "validation switched off"
    )
    b1, b256 = timings(predict, ctx.data.x_test, ctx.repeats)
    size, gz = file_sizes(path)
    precision = "int8" if quantization.startswith("int8") else "float32"
    return ArtifactRow(
        file=file,
        format=fmt,
        runtime="onnxruntime",
        precision=precision,
        quantization=quantization,
        sparsity=ctx.figures.sparsity if sparsity is None else sparsity,
        size_bytes=size,
        gzip_bytes=gz,
        compression=ctx.original_figures.keras_gzip_bytes / gz,
        agreement=agreement,
        max_abs_diff=None,
        latency_b1_ms=b1,
        throughput_b256=b256,
        verdict=verdict,
        checks=checks,
        detail=detail,
        **{"accuracy": None, "accuracy_change": None, **changes(value, ctx)},
        ci95=None if test is None else test.ci95,
        **nll_figures,
        **extra,
    )


def _one_hot(classes, ctx: RunContext) -> np.ndarray:
    """Predicted classes as one-hot rows: what the paired accuracy interval reads (its argmax)."""
    classes = np.asarray(classes, np.int64)
    return np.eye(max(ctx.data.num_classes, int(classes.max(initial=0)) + 1), dtype=np.float32)[classes]


def _extras(comparison) -> str:
    """What the MC model (or ensemble) was given beyond the export, for the step's reason."""
    parts = []
    if getattr(comparison, "temperature", None) is not None:
        fit = comparison.temperature.fit
        parts.append(f"temperature {fit.temperature:.3f} ({fit.placement.value})")
    if getattr(comparison, "std_scale", None) is not None:  # a regressor's variance calibration
        parts.append(f"std x {comparison.std_scale.fit.std_scale:.3f}")
    if comparison.selective is not None:
        chosen, test = comparison.selective.chosen, comparison.selective.test
        parts.append(
            f"abstain when {chosen.measure.value} > {chosen.threshold:.3g} (test coverage {test.coverage:.1%})"
        )
    if getattr(comparison, "conformal", None) is not None:
        cal, test = comparison.conformal.calibration, comparison.conformal.test
        size = f"mean width {test.mean_width:.3g}" if cal.regression else f"mean set size {test.mean_set_size:.2f}"
        parts.append(f"conformal {cal.method.value} at {cal.coverage:.0%} (test coverage {test.coverage:.1%}, {size})")
    return "; " + "; ".join(parts) if parts else ""


def _members_sparsity(members: Sequence[Path]) -> float:
    """The members' mean sparsity, as each one's export metadata records it."""
    import onnx

    from deploykit.export.metadata import read_metadata

    return float(np.mean([read_metadata(onnx.load(str(m))).sparsity or 0.0 for m in members]))


def _predicted(model, ctx: RunContext) -> np.ndarray:
    """The optimized model's predicted classes on the test split (logits, probabilities or a binary head alike)."""
    from deploykit.core.evaluate import outputs

    return main_outputs(outputs(model, ctx.data.x_test), ctx.kind).argmax(1)
