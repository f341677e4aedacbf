"""The ``[structured]`` step: whole units and channels removed before the sparsity search, held to the budget.

Its own module (the step functions of ``steps.py`` are the model-changing steps every run has): it builds
the step's :class:`~deploykit.sparsity.StructuredConfig` from the pipeline's fine-tuning settings, decides on
the validation split and records one try beside the sparsity search's.
"""

from __future__ import annotations

import dataclasses
import time

from deploykit.core.evaluate import Metric
from deploykit.pipeline.context import RunContext, sparsity_rows, switched_off
from deploykit.pipeline.records import Stage, Status, StepOutput, StepRecord, Try


def structured_step(model, ctx: RunContext) -> StepOutput:
    """Remove ``[structured] fraction`` of each hidden layer's units; keep the result when its validation figure
    is within the budget of the original model's, else go on with the model unchanged."""
    step = ctx.config.structured
    if not step.enabled:
        return switched_off(model, "structured")
    from deploykit.core.evaluate import score
    from deploykit.sparsity import StructuredConfig, prune_structured

    tuning = {
        f.name: getattr(ctx.config.sparsity.prune, f.name)
        for f in dataclasses.fields(StructuredConfig)
        if f.name not in ("fraction", "layer_fraction", "compact") and hasattr(ctx.config.sparsity.prune, f.name)
    }
    config = StructuredConfig(fraction=step.fraction, layer_fraction=step.layer_fraction, **tuning)
    start = time.perf_counter()
    ctx.say(f"  removing {step.fraction:.0%} of each hidden layer's units (structured), then fine-tuning")
    result, report = prune_structured(model, ctx.data, config=config, progress=lambda m: ctx.say("  " + m))
    from deploykit.core.evaluate import main_outputs, outputs
    from deploykit.pipeline.confirm import VALIDATION, reference_outputs, split_figure

    original = score(ctx.original, ctx.data.x_val, ctx.data.y_val, ctx.data.task)
    ref = ctx.reference or reference_outputs(ctx.original, ctx.data, ctx.kind)
    val = split_figure(
        VALIDATION, main_outputs(outputs(result, ctx.data.x_val), ctx.kind), ref.val, ctx.data.y_val, ctx.budget
    )  # decided on validation by the runs' one accept rule, with its paired interval
    kept = val.within
    setting = f"structured {step.fraction:.0%}"
    note = f"validation {ctx.budget.change(original, val.value)}, budget: {ctx.budget.describe()}"
    attempt = Try(
        Stage.SPARSITY,
        setting,
        **_figures(val, ctx),
        gzip_bytes=_gzip(result),
        kept=kept,
        note="" if kept else note,
        seconds=round(time.perf_counter() - start, 2),
        ci95=val.ci95,
    )
    what = f"{report.macs_before:,} -> {report.macs_after:,} MACs ({report.mac_ratio:.2f}x fewer); {note}"
    if not kept:
        ctx.say(f"  {setting} missed: {note}")
        return StepOutput(
            model,
            StepRecord("structured", Status.MISSED, f"{what}; the model keeps its units", detail=report),
            tries=(attempt,),
        )
    ctx.say(f"  kept {setting}: {what}")
    return StepOutput(
        result,
        StepRecord("structured", Status.DONE, what, detail=report),
        tries=(attempt,),
        layer_sparsity=sparsity_rows(result, "after structured"),
        applied=(f"prune_structured({step.fraction:.2f})",),
    )


def _figures(val, ctx: RunContext) -> dict:
    """A try's figures: its validation value and change against the original on the same rows."""
    if ctx.metric is Metric.RMSE:
        return {"accuracy": None, "accuracy_change": None, "rmse": val.value, "rmse_change": val.change}
    return {"accuracy": val.value, "accuracy_change": val.change}


def _gzip(model) -> int:
    from deploykit.sparsity.report import saved_sizes

    return saved_sizes(model)[1]
