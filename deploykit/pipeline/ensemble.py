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
from deploykit.pipeline.steps import MODEL_FILE, ORIGINAL_FILE


def optimize_members(models: Sequence, data, folder: str | os.PathLike, progress=None, *, mc_samples: int | None = None,
                     keep_keras: bool = False, **options) -> tuple[list[Path], Path]:
    """Run each model through ``optimize`` (fold, prune, int8-dynamic ONNX); the member files and one original.

    ``options`` are ``optimize``'s flat options (e.g. ``sparsity=0.8``); the formats, variants and MC
    options are fixed to one int8 ONNX per member. Returns the int8 ONNX paths (``member{k}.onnx`` in
    ``folder``) and the first member's float32 original (as optimize saved it). A member whose int8
    model misses the accuracy budget is a StepError naming it.

    ``mc_samples`` (MC Dropout inside each member): each member is instead the MC Dropout model of its
    optimized Keras model (BatchNorm kept where folding it would cross a dropout, as ``optimize`` does
    for its MC model), drawing ``mc_samples`` samples and outputting them all, int8-dynamic like the
    deterministic members; the int8 deterministic model still has to meet the budget.

    ``keep_keras``: also keep each member's optimized Keras model as ``member{k}.keras`` in ``folder``
    (the model to fine-tune further, or to build the member's MC model from with :func:`mc_member`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, original = [], folder / ORIGINAL_FILE
    for k, model in enumerate(models):
        with tempfile.TemporaryDirectory(prefix="deploykit-member-") as tmp:
            result = optimize(model, data, out_dir=Path(tmp) / "out", formats="onnx", quantize="int8-dynamic",
                              mc=mc_samples is not None, samples=mc_samples, progress=progress, **options)
            shipped = [r.file for r in result.artifacts if r.format == "onnx" and r.precision == "int8" and r.verdict.shipped]
            if not shipped:
                raise StepError(f"ensemble member {k}: no int8 ONNX model within the accuracy budget "
                                f"({'; '.join(r.checks for r in result.rejected)})", step="ensemble")
            path = folder / f"member{k}.onnx"
            if mc_samples is None:
                shutil.copy(result.out_dir / shipped[0], path)
            else:
                mc_member(result.out_dir / MODEL_FILE, path, mc_samples, data)
            if keep_keras:
                shutil.copy(result.out_dir / MODEL_FILE, path.with_suffix(".keras"))
            paths.append(path)
            if k == 0:
                shutil.copy(result.out_dir / ORIGINAL_FILE, original)
    return paths, original


def mc_member(keras_file: Path, path: Path, samples: int, data) -> None:
    """The MC Dropout model of an optimized member, with every sample as an output, int8-dynamic after the int8
    preparation (as the deterministic members are)."""
    from deploykit.io import load_model
    from deploykit.uncertainty import MCConfig, export_mc_onnx

    export_mc_onnx(load_model(keras_file), path, config=MCConfig(samples=samples, include_samples=True),
                   class_names=list(data.class_names) or None, quantization="int8-dynamic", calibration=data)
