"""Deep ensembles through the pipeline: each member optimized (fold, prune, int8 ONNX) within the budget, the
members in one calibrated ONNX model, for ``deploykit ensemble`` and for ``optimize``'s ``[ensemble]`` step.

Here, not in :mod:`deploykit.uncertainty.ensemble`, because it runs ``optimize``: the pipeline sits above
the uncertainty package (whose MC model it builds), so the uncertainty package never imports it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.contract import ENSEMBLE_FILE, MEMBERS_DIR
from deploykit.errors import DataError, ModelLoadError, StepError, UsageError
from deploykit.pipeline.records import ArtifactRow, Status, StepOutput, StepRecord, Verdict
from deploykit.pipeline.steps import ENSEMBLE_DIR, MODEL_FILE, ORIGINAL_FILE, RunContext, budget_miss, changes, timings, verdict_for
from deploykit.records import Record
from deploykit.task import Task



#: ``deploykit.pipeline.optimize``: this module sits below the engine that runs its step, so it is given it.
Optimize = Callable[..., Any]


def optimize_members(optimize: Optimize, models: Sequence, data, folder: str | os.PathLike, progress=None, *,
                     mc_samples: int | None = None, keep_keras: bool = False, **options) -> tuple[list[Path], Path]:
    """Run each model through ``optimize`` (fold, prune, int8-dynamic ONNX); the member files and one original.

    ``options`` are ``optimize``'s options (flat ones, e.g. ``sparsity=0.8``, or ``config=``); the formats,
    variants and MC options are fixed to one int8 ONNX per member. Returns the int8 ONNX paths
    (``member{k}.onnx`` in ``folder``) and the first member's float32 original (as optimize saved it). A
    member whose int8 model misses the accuracy budget is a StepError naming it.

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
    from deploykit.export.metadata import ModelMetadata
    from deploykit.io import load_model
    from deploykit.sparsity.report import kernel_sparsity, model_sparsity
    from deploykit.uncertainty import MCConfig, export_mc_onnx

    model = load_model(keras_file)
    meta = ModelMetadata(sparsity=round(float(model_sparsity(kernel_sparsity(model, {}))), 6))  # as the int8 members record it
    export_mc_onnx(model, path, config=MCConfig(samples=samples, include_samples=True), metadata=meta,
                   class_names=list(data.class_names) or None, quantization="int8-dynamic", calibration=data)


@dataclass
class EnsembleRun(Record):
    """What :func:`build_ensemble` wrote in its folder: the calibrated ensemble and its sizes against the original."""

    bundle: object  # deploykit.uncertainty.bundle.EnsembleBundle
    sizes: object  # deploykit.uncertainty.ensemble.EnsembleSizes
    members: list[Path]
    mc_samples: int | None = None


def build_ensemble(optimize: Optimize, models: Sequence, data, folder: Path, *, mc_samples: int | None = None,
                   temperature: bool = True, target=None, ood: np.ndarray | None = None,
                   say: Callable[[str], None] = lambda m: None, **options) -> EnsembleRun:
    """Optimize the members (:func:`optimize_members`, ``options`` as there; their optimized Keras models kept)
    into ``folder/members`` and write ``folder/ensemble.onnx``, calibrated, thresholded (``target``) and evaluated
    (``ood``) by :func:`deploykit.uncertainty.bundle.ensemble_bundle`."""
    from deploykit.uncertainty.bundle import ensemble_bundle
    from deploykit.uncertainty.ensemble import ensemble_sizes

    if mc_samples is not None and mc_samples < 1:
        raise UsageError(f"mc_samples must be >= 1, got {mc_samples}")
    if len(models) < 2:
        raise UsageError(f"a deep ensemble needs at least 2 members, got {len(models)}")
    members, original = optimize_members(optimize, models, data, folder / MEMBERS_DIR, progress=lambda m: say("  " + m),
                                         mc_samples=mc_samples, keep_keras=True, **options)
    say(f"writing {ENSEMBLE_FILE} ({len(members)} members)")
    bundle = ensemble_bundle(members, data, folder / ENSEMBLE_FILE, temperature=temperature, target=target, ood=ood,
                             say=lambda m: say("  " + m))
    return EnsembleRun(bundle, ensemble_sizes(members, bundle.export.path, original), members, mc_samples)


# --- optimize's [ensemble] step ---------------------------------------------------------------------


def ensemble_step(optimize: Optimize, model, ctx: RunContext) -> StepOutput:
    """``[ensemble] members``: the run's original model and those files as a deep ensemble (each through this run's
    own sparsity and int8-dynamic export), calibrated and thresholded like the MC model, held to the budget."""
    from deploykit.export.artifact import file_sizes
    from deploykit.pipeline.config import EnsembleStep
    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.ood import load_ood

    step, config = ctx.config.ensemble, ctx.config
    others = [load_member(file, ctx.data, ctx.unsafe) for file in step.members]
    members_config = dataclasses.replace(config, ensemble=EnsembleStep(), input=dataclasses.replace(config.input, ood_data=None))
    run = build_ensemble(optimize, [ctx.original, *others], ctx.data, ctx.folder / ENSEMBLE_DIR, mc_samples=step.mc_samples,
                         temperature=config.mc.temperature, target=config.mc.selective_target(),
                         ood=load_ood(config.input.ood_data) if config.input.ood_data else None, say=ctx.say,
                         config=members_config, triton=False)
    path, file = run.bundle.export.path, f"{ENSEMBLE_DIR}/{ENSEMBLE_FILE}"
    predictor = UncertaintyPredictor(path)
    if ctx.task is Task.REGRESSION:
        value = run.bundle.comparison.mc.rmse
        agreement = None
    else:
        value = run.bundle.comparison.mc.accuracy
        agreement = float(np.mean(run.bundle.predicted_class == np.asarray(_predicted(model, ctx))))
    missed = budget_miss(value, ctx)
    verdict = verdict_for(missed, ctx)
    checks = ("missed: " + "; ".join(map(str, missed)) if missed and config.validate.enabled else
              f"ensemble {ctx.budget.describe()}" if config.validate.enabled else "validation switched off")
    b1, b256 = timings(lambda v: predictor.predict(v), ctx.data.x_test, ctx.repeats)
    size, gz = file_sizes(path)
    row = ArtifactRow(
        file=file, format="onnx-ensemble", runtime="onnxruntime", precision="int8", quantization="int8-dynamic",
        sparsity=_members_sparsity(run.members), size_bytes=size, gzip_bytes=gz, compression=ctx.original_figures.keras_gzip_bytes / gz,
        agreement=agreement, max_abs_diff=None, latency_b1_ms=b1, throughput_b256=b256, verdict=verdict, checks=checks,
        detail=run.bundle.export, **{"accuracy": None, "accuracy_change": None, **changes(value, ctx)})
    if verdict is Verdict.REJECTED:
        shutil.rmtree(ctx.folder / ENSEMBLE_DIR)  # a rejected ensemble is not shipped: nothing of it is left
        ctx.say(f"  rejected {file}: {checks}")
    s = run.sizes
    reason = (f"{s.members} members{f', MC Dropout inside (T = {step.mc_samples} each)' if step.mc_samples else ''}: "
              f"{s.ensemble_gzip / s.original_gzip:.2f}x the original's gzip size; {run.bundle.comparison.method} "
              f"{'RMSE' if ctx.task is Task.REGRESSION else 'accuracy'} {value:.4g} ({verdict.value})")
    files = [file, *(f"{ENSEMBLE_DIR}/{p}" for p in run.bundle.comparison.plots)] if verdict.shipped else []
    return StepOutput(model, StepRecord("ensemble", Status.DONE, reason, artifacts=files, checks=checks,
                                        detail={"sizes": s, "comparison": run.bundle.comparison}), artifacts=(row,))


def load_member(file: str, data, unsafe: bool = False):
    """An ``[ensemble] members`` file, loaded and checked against the run's data (its inputs, and its outputs against
    the labels: softmax and logits members mix, the ensemble averages probabilities); a bad one is one error of its
    kind (ModelLoadError, DataError, UsageError) naming the file."""
    from deploykit.io import load_model

    try:
        model = load_model(file, unsafe=unsafe)
        data.check_model(model)
    except (ModelLoadError, DataError, UsageError) as exc:
        kind = next(k for k in (ModelLoadError, DataError, UsageError) if isinstance(exc, k))
        raise kind(f"ensemble member {file}: {exc}") from None
    return model


def _members_sparsity(members: Sequence[Path]) -> float:
    """The members' mean sparsity, as each one's export metadata records it."""
    import onnx

    from deploykit.export.metadata import read_metadata

    return float(np.mean([read_metadata(onnx.load(str(m))).sparsity or 0.0 for m in members]))


def _predicted(model, ctx: RunContext) -> np.ndarray:
    """The optimized model's predicted classes on the test split (logits or probabilities alike)."""
    from deploykit.evaluate import outputs

    return np.asarray(outputs(model, ctx.data.x_test)).argmax(1)
