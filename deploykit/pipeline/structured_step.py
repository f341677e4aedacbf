"""The ``[structured]`` step: whole units and channels removed before the sparsity search, held to the budget.

Its own module (the step functions of ``steps.py`` are the model-changing steps every run has): it builds
the step's :class:`~deploykit.sparsity.StructuredConfig` from the pipeline's fine-tuning settings, decides on
the validation split and records one try beside the sparsity search's.
"""

from __future__ import annotations

import dataclasses
import time

from deploykit.pipeline.records import Stage, Status, StepOutput, StepRecord, Try
from deploykit.pipeline.steps import RunContext, changes, sparsity_rows, switched_off


def structured_step(model, ctx: RunContext) -> StepOutput:
    """Remove ``[structured] fraction`` of each hidden layer's units; keep the result when its validation figure
    is within the budget of the original model's, else go on with the model unchanged."""
    step = ctx.config.structured
    if not step.enabled:
        return switched_off(model, "structured")
    from deploykit.evaluate import score
    from deploykit.sparsity import StructuredConfig, prune_structured

    tuning = {f.name: getattr(ctx.config.sparsity.prune, f.name) for f in dataclasses.fields(StructuredConfig)
              if f.name not in ("fraction", "layer_fraction", "compact") and hasattr(ctx.config.sparsity.prune, f.name)}
    config = StructuredConfig(fraction=step.fraction, layer_fraction=step.layer_fraction, **tuning)
    start = time.perf_counter()
    ctx.say(f"  removing {step.fraction:.0%} of each hidden layer's units (structured), then fine-tuning")
    result, report = prune_structured(model, ctx.data, config=config, progress=lambda m: ctx.say("  " + m))
    original = score(ctx.original, ctx.data.x_val, ctx.data.y_val, ctx.data.task)
    kept = ctx.budget.within(original, report.val_after)
    test = score(result, ctx.data.x_test, ctx.data.y_test, ctx.data.task)
    setting = f"structured {step.fraction:.0%}"
    note = f"validation {ctx.budget.change(original, report.val_after)}, budget: {ctx.budget.describe()}"
    attempt = Try(Stage.SPARSITY, setting, **_figures(test, ctx), gzip_bytes=_gzip(result), kept=kept,
                  note="" if kept else note, seconds=round(time.perf_counter() - start, 2))
    what = f"{report.macs_before:,} -> {report.macs_after:,} MACs ({report.mac_ratio:.2f}x fewer); {note}"
    if not kept:
        ctx.say(f"  {setting} missed: {note}")
        return StepOutput(model, StepRecord("structured", Status.MISSED, f"{what}; the model keeps its units",
                                            detail=report), tries=(attempt,))
    ctx.say(f"  kept {setting}: {what}")
    return StepOutput(result, StepRecord("structured", Status.DONE, what, detail=report), tries=(attempt,),
                      layer_sparsity=sparsity_rows(result, "after structured"),
                      applied=(f"prune_structured({step.fraction:.2f})",))


def _figures(value: float, ctx: RunContext) -> dict:
    figures = changes(value, ctx)
    return {"accuracy": figures.pop("accuracy", None), "accuracy_change": figures.pop("accuracy_change", None),
            **figures}


def _gzip(model) -> int:
    from deploykit.sparsity.report import saved_sizes

    return saved_sizes(model)[1]
