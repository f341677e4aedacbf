"""What the fallback ships, and what follows it, without importing the steps that use it.

The ``fallback`` step (:mod:`deploykit.pipeline.fallback`) exports your folded model where nothing of the chain
shipped; the MC Dropout step then builds its model from the same one (:func:`mc_source`). Both read this module, so
neither step imports the other (the fallback step exports through the MC module's export step).
"""

from __future__ import annotations

import dataclasses
from typing import Any

FALLBACK = "fallback"  # the step's name and report.json's key
STEM = "original"  # the fallback files are named after original.keras: original.onnx, original.tflite


def fallback_file(fmt: str) -> str:
    """``original.onnx`` / ``original.tflite``."""
    return f"{STEM}.{fmt}"


def folded_original(ctx) -> tuple[Any, tuple[str, ...], str]:
    """(the user's model after the fold step's exact BatchNorm fold, what was applied, how to say it); the model as
    given when the fold is switched off, finds nothing to fold, or fails its own output check."""
    from deploykit.errors import StepError
    from deploykit.pipeline.steps import fold_step

    try:
        out = fold_step(ctx.original, ctx)
    except StepError as exc:
        ctx.say(f"  the fold of your model failed its check ({exc}): exporting it unfolded")
        return ctx.original, (), "your model as given, float32 (no fold)"
    if out.applied:
        return out.model, out.applied, "your model folded (BatchNorm), uncompressed, float32"
    return out.model, out.applied, "your model as given (nothing folded), uncompressed, float32"


def mc_source(model, ctx) -> tuple[Any, Any]:
    """(the model the MC Dropout step builds from, the context its row is measured in): your folded model, with the
    original's figures, where this run's ONNX fallback shipped ``original.onnx``; else ``model`` and ``ctx``."""
    record = next((o.record for o in ctx.made if o.record.step == FALLBACK), None)
    if record is None or fallback_file("onnx") not in record.artifacts:  # the fallback's shipped files
        return model, ctx
    source, applied, what = folded_original(ctx)
    ctx.say(f"  building it from {what}: the ONNX fallback shipped it")
    return source, dataclasses.replace(ctx, figures=ctx.original_figures, applied=applied)
