"""The pipeline's model steps (sparsity, fold, compact, save): each takes the model and the run's context and
returns a :class:`StepOutput`. What steps share is in :mod:`deploykit.pipeline.context`, the artifact steps in
:mod:`deploykit.pipeline.export_steps` (both re-exported here, their names' earlier home).

The steps run in the order of :data:`deploykit.pipeline.registry.STEPS`. A step never mutates the
model it takes nor the context (both are read-only to it): it returns its model, its record, and what it
made (artifact rows, per-layer sparsity, the settings it tried); the runner aggregates them (the way
Olive's engine runs passes). A step switched off, or one the model does not allow (nothing to fold,
no dropout), returns a ``skipped`` record saying why. A step or artifact that misses the accuracy
budget is reported (``missed budget`` / a ``rejected`` row, its file removed) and the run goes on; a
step that finds a bug (a fold that changes the outputs) raises :class:`~deploykit.errors.StepError`.
"""

from __future__ import annotations

import time

from deploykit.core.evaluate import main_outputs
from deploykit.errors import StepError
from deploykit.pipeline.context import (  # noqa: F401  (re-exported: the names' earlier home)
    BUDGET_REPEATS,
    ENSEMBLE_DIR,
    MC_FILE,
    MODEL_FILE,
    ORIGINAL_FILE,
    RunContext,
    Step,
    budget_miss,
    changes,
    describe_figure,
    judge,
    keras_row,
    model_figures,
    sparsity_rows,
    switched_off,
    timed,
    timings,
    try_row,
    verdict_for,
    withdraw,
)
from deploykit.pipeline.export_steps import export_step, metadata, triton_step  # noqa: F401  (re-exported)
from deploykit.pipeline.records import Stage, Status, StepOutput, StepRecord
from deploykit.pipeline.tables import SparsityMethod


def fold_step(model, ctx: RunContext) -> StepOutput:
    if not ctx.config.fold.enabled:
        return switched_off(model, "fold")
    # With an MC Dropout model to build, a BatchNorm stays where folding it would pass a Dropout: exact at
    # inference either way, but the folded shift would no longer be dropped with its unit when sampling.
    from deploykit.core.evaluate import output_scale, outputs
    from deploykit.fold import fold_batchnorm

    folded, report = fold_batchnorm(model, through_dropout=not ctx.config.mc.enabled, unsafe=ctx.unsafe)
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
    name = f"sparsity ({step.method.value})"
    left = _prunable_left(model, step.prune if step.method is SparsityMethod.PRUNE else step.l1)
    if left:  # before the search too: an RNN text classifier's one prunable layer is its output layer
        return StepOutput(model, StepRecord(name, Status.SKIPPED, left))
    if step.searching:
        return _searched(model, ctx)
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
    from deploykit.core.evaluate import outputs
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
    attempt = try_row(
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
    from deploykit.core.graph import graph_from_model

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


def _searched(model, ctx: RunContext) -> StepOutput:
    """The highest target of the search within the budget; every try reported."""
    from deploykit.pipeline.search_rule import search_rule
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
        ray=ctx.config.plan.ray,
        nll=search_rule(model, ctx),
    )
    tries = tuple(
        try_row(
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
            nll_change=getattr(t, "nll_change", None),
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
    from deploykit.core.graph import graph_from_model
    from deploykit.sparsity import compact

    if not any(node.spec.support.compactable for node in graph_from_model(model, unsafe=True).nodes):
        # an LSTM autoencoder (LSTM, RepeatVector, TimeDistributed(Dense)): nothing whose units compact removes
        why = "nothing to compact: no Dense layer or convolution at the top level"
        return StepOutput(model, StepRecord("compact", Status.SKIPPED, why))
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
    from deploykit.io.models import save_model_like

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
