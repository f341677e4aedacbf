"""Ensemble members through the pipeline: each model optimized (fold, prune, int8 ONNX) within the budget.

Here, not in :mod:`deploykit.uncertainty.ensemble`, because it runs ``optimize``: the pipeline sits above
the uncertainty package (whose MC model it builds), so the uncertainty package never imports it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from deploykit.errors import StepError
from deploykit.pipeline.run import optimize
from deploykit.pipeline.steps import ORIGINAL_FILE


def optimize_members(models: Sequence, data, folder: str | os.PathLike, progress=None, **options) -> tuple[list[Path], Path]:
    """Run each model through ``optimize`` (fold, prune, int8-dynamic ONNX; no MC); the member files and one original.

    ``options`` are ``optimize``'s flat options (e.g. ``sparsity=0.8``); the formats, variants and MC
    options are fixed to one int8 ONNX per member. Returns the int8 ONNX paths (``member{k}.onnx`` in
    ``folder``) and the first member's float32 original (as optimize saved it). A member whose int8
    model misses the accuracy budget is a StepError naming it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, original = [], folder / ORIGINAL_FILE
    for k, model in enumerate(models):
        with tempfile.TemporaryDirectory(prefix="deploykit-member-") as tmp:
            result = optimize(model, data, out_dir=Path(tmp) / "out", formats="onnx", quantize="int8-dynamic", mc=False,
                              progress=progress, **options)
            shipped = [r.file for r in result.artifacts if r.format == "onnx" and r.precision == "int8" and r.verdict.shipped]
            if not shipped:
                raise StepError(f"ensemble member {k}: no int8 ONNX model within the accuracy budget "
                                f"({'; '.join(r.checks for r in result.rejected)})", step="ensemble")
            paths.append(Path(shutil.copy(result.out_dir / shipped[0], folder / f"member{k}.onnx")))
            if k == 0:
                shutil.copy(result.out_dir / ORIGINAL_FILE, original)
    return paths, original
