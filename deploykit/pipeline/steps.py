"""The pipeline's steps: each takes the model and the run's context and returns ``(model, StepRecord)``.

A pipeline is a list of :class:`Step` (see :func:`build_pipeline`). Steps
never mutate the model they take. A step switched off, or one the model does
not allow (nothing to fold, no dropout), returns a ``skipped`` record saying
why. A
step that misses its check raises :class:`~deploykit.errors.StepError`
(the runner adds the step's name).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.data import Dataset
from deploykit.errors import StepError, UnsupportedLayerError, UsageError
from deploykit.export.bundle import TRITON_DIR, artifact_name
from deploykit.export.config import ExportFormat, Quantization
from deploykit.pipeline.config import OptimizeConfig, SparsityMethod
from deploykit.pipeline.plots import RELIABILITY_PLOT
from deploykit.pipeline.records import ArtifactRow, LayerSparsityRow, ModelFigures, Status, StepRecord, Verdict

ORIGINAL_FILE = "original.keras"
MODEL_FILE = "model.keras"
MC_FILE = "model_mc.onnx"


@dataclass
class Context:
    """What the steps share during one run."""

    data: Dataset
    config: OptimizeConfig
    folder: Path  # the staging folder (moved into place when the run succeeds)
    say: Callable[[str], None]
    original: Any  # the input model (never changed)
    original_figures: ModelFigures
    figures: ModelFigures  # of the current model
    applied: list[str] = field(default_factory=list)  # what was done, for the ONNX metadata ("fold_batchnorm", ...)
    artifacts: list[ArtifactRow] = field(default_factory=list)
    layer_sparsity: list[LayerSparsityRow] = field(default_factory=list)
    mc: dict[str, Any] | None = None  # deterministic vs MC comparison
    keras3: bool = False  # the input was a Keras 3 file: .keras outputs are written as Keras 3 files

    @property
    def repeats(self) -> int:
        return self.config.validate.latency_repeats


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Any, Context], tuple[Any, StepRecord]]


def _off(step: str) -> StepRecord:
    return StepRecord(step, Status.SKIPPED, "switched off")


# --- measurements ---------------------------------------------------------------------------

def model_figures(model, data: Dataset) -> ModelFigures:
    """Parameters, Dense MACs, sparsity, test accuracy and saved size of a tf_keras model."""
    from deploykit.sparsity.report import kernel_sparsity, model_sparsity, saved_sizes
    from deploykit.sparsity.tuning import accuracy

    layers = kernel_sparsity(model, {})
    size, gz = saved_sizes(model)
    return ModelFigures(int(model.count_params()), sum(l.weights for l in layers), float(model_sparsity(layers)),
                        accuracy(model, data.x_test, data.y_test), size, gz)


def sparsity_rows(model, stage: str) -> list[LayerSparsityRow]:
    from deploykit.sparsity.report import kernel_sparsity

    return [LayerSparsityRow(stage, l.name, l.weights, l.zeros, l.sparsity) for l in kernel_sparsity(model, {})]


def timings(predict: Callable[[np.ndarray], Any], x: np.ndarray, repeats: int) -> tuple[float, float]:
    """(median batch-1 latency in ms, batch-256 throughput in examples/s)."""
    from deploykit.export.runtimes import median_seconds

    one, batch = x[:1], np.resize(x, (256, *x.shape[1:]))
    b1 = median_seconds(lambda: predict(one), repeats)
    b256 = median_seconds(lambda: predict(batch), max(3, repeats // 5))
    return 1000 * b1, 256 / b256


def keras_row(model, file: str, ctx: Context, verdict: Verdict, checks: str) -> ArtifactRow:
    """The row of a saved .keras model (the current one), measured in tf_keras (``model(x)`` calls)."""
    from deploykit.export.artifact import file_sizes
    from deploykit.sparsity.tuning import outputs

    size, gz = file_sizes(ctx.folder / file)
    probs = outputs(model, ctx.data.x_test)
    reference = outputs(ctx.original, ctx.data.x_test) if model is not ctx.original else probs
    acc = float(np.mean(probs.argmax(1) == ctx.data.y_test))
    b1, b256 = timings(lambda v: model(v, training=False), ctx.data.x_test, ctx.repeats)
    return ArtifactRow(
        file=file, format="keras", runtime="tf_keras", precision="float32", quantization="float32",
        sparsity=ctx.figures.sparsity,
        size_bytes=size, gzip_bytes=gz, compression=ctx.original_figures.keras_gzip_bytes / gz,
        accuracy=acc, accuracy_change=acc - ctx.original_figures.accuracy,
        agreement=float(np.mean(probs.argmax(1) == reference.argmax(1))),
        max_abs_diff=float(np.abs(probs - reference).max()), latency_b1_ms=b1, throughput_b256=b256,
        verdict=verdict, checks=checks,
    )


# --- model steps ------------------------------------------------------------------------------

def fold_step(model, ctx: Context):
    if not ctx.config.fold.enabled:
        return model, _off("fold")
    from deploykit.fold import fold_batchnorm

    # With an MC Dropout model to build, a BatchNorm stays where folding it would pass a Dropout: exact at
    # inference either way, but the folded shift would no longer be dropped with its unit when sampling.
    folded, report = fold_batchnorm(model, through_dropout=not ctx.config.mc.enabled)
    tolerance = ctx.config.validate.fold_tolerance
    checks = f"max |output difference| {report.max_abs_diff:.2g} <= {tolerance:g}" if ctx.config.validate.enabled else ""
    if ctx.config.validate.enabled and report.max_abs_diff > tolerance:
        raise StepError(f"max |output difference| = {report.max_abs_diff:.3g} between the original and folded "
                        f"model, required <= {tolerance:g}")
    if not report.changed:
        reason = "nothing to fold (no BatchNormalization or input standardization)"
    else:
        ctx.applied.append("fold_batchnorm")
        reason = "folded " + ", ".join(f"{f.name} into {f.target}" for f in report.folded)
    if report.unfolded:
        reason += "; kept " + ", ".join(f"{u.name} ({u.reason})" for u in report.unfolded)
    return folded, StepRecord("fold", Status.DONE, reason, checks=checks, detail=report.to_dict())


def sparsity_step(model, ctx: Context):
    step = ctx.config.sparsity
    if not step.enabled:
        return model, _off("sparsity")
    name = f"sparsity ({step.method.value})"
    from deploykit.sparsity import prune, sparsify_l1

    if step.method is SparsityMethod.PRUNE:
        ctx.say(f"  pruning to {step.prune.target_sparsity:.0%} over up to {step.prune.epochs} epochs")
        result, report = prune(model, ctx.data, config=step.prune, progress=lambda m: ctx.say("  " + m))
        ctx.applied.append(f"prune({step.prune.target_sparsity:.2f})")
        reason = f"TF-MOT pruning: model sparsity {report.sparsity:.1%} ({report.epochs_run} epochs)"
    else:
        ctx.say(f"  l1 = {step.l1.l1:g} over up to {step.l1.epochs} epochs, then zeroing |w| < {step.l1.threshold:g}")
        result, report = sparsify_l1(model, ctx.data, config=step.l1, progress=lambda m: ctx.say("  " + m))
        ctx.applied.append(f"l1({step.l1.l1:g})")
        reason = f"l1 fine-tuning then zeroing: model sparsity {report.sparsity:.1%} ({report.epochs_run} epochs)"
    checks = ""
    if ctx.config.validate.enabled:
        drop, allowed = report.accuracy_before - report.accuracy_after, ctx.config.validate.max_accuracy_drop
        checks = f"accuracy drop {100 * drop:.2f} pt <= {100 * allowed:g} pt"
        if drop > allowed:
            raise StepError(f"test accuracy = {report.accuracy_after:.4f}, {100 * drop:.2f} points below "
                            f"{report.accuracy_before:.4f} before the step, required a drop <= {100 * allowed:g} points "
                            "(more fine-tuning epochs or a lower target may help)")
    ctx.layer_sparsity += sparsity_rows(result, "after sparsity")
    return result, StepRecord(name, Status.DONE, reason, checks=checks, detail=report.to_dict())


def compact_step(model, ctx: Context):
    if not ctx.config.compact.enabled:
        return model, _off("compact")
    from deploykit.sparsity import compact

    result, report = compact(model, ctx.data, tolerance=ctx.config.compact.tolerance)
    if report.neurons_removed:
        ctx.applied.append("compact")
        reason = f"removed {report.neurons_removed} dead neurons; Dense MACs {report.macs_ratio:.1%} of before"
    else:
        reason = "no dead neurons to remove"
    checks = f"max |output difference| {report.max_abs_diff:.2g} <= {ctx.config.compact.tolerance:g}" \
        if report.max_abs_diff is not None else ""
    return result, StepRecord("compact", Status.DONE, reason, checks=checks, detail=report.to_dict())


def save_step(model, ctx: Context):
    """Save the optimized tf_keras model (the source of every artifact) and measure it."""
    from deploykit.keras3 import save_model_like

    save_model_like(model, ctx.folder / MODEL_FILE, ctx.keras3)
    ctx.artifacts.append(keras_row(model, MODEL_FILE, ctx, Verdict.NOT_VALIDATED, "the exported model itself"))
    ctx.layer_sparsity += sparsity_rows(model, "exported")
    kind = "Keras 3" if ctx.keras3 else "tf_keras"
    return model, StepRecord("save model", Status.DONE, f"optimized {kind} model: {MODEL_FILE}", artifacts=[MODEL_FILE])


# --- artifacts ----------------------------------------------------------------------------------

def metadata(model, ctx: Context, accuracy: float):
    from deploykit.export.metadata import ModelMetadata

    return ModelMetadata(class_names=list(ctx.data.class_names), input_shape=[int(d) for d in model.input_shape[1:]],
                         steps=list(ctx.applied), sparsity=round(ctx.figures.sparsity, 6), reference_accuracy=accuracy)


def export_step(fmt: ExportFormat, quant: Quantization, model, ctx: Context):
    """One artifact through the exporter's own ``export_variant``, measured (and checked) in its runtime."""
    from deploykit.export import export_variant

    step = ctx.config.export
    file = artifact_name(fmt, quant)
    record = export_variant(model, fmt, quant, ctx.folder / file, ctx.data, config=step.quantization, opset=step.opset,
                            metadata=metadata(model, ctx, ctx.figures.accuracy))
    row, checks = _measure_artifact(record, file, model, ctx)
    ctx.artifacts.append(row)
    return model, StepRecord(f"export {fmt.value} {quant.value}", Status.DONE, f"{file} ({fmt.value} {quant.value})",
                             artifacts=[file], checks=checks, detail=record.to_dict())


def _measure_artifact(record, file: str, model, ctx: Context) -> tuple[ArtifactRow, str]:
    """Measure the artifact in its runtime; with [validate] on, a missed tolerance raises ValidationError."""
    from deploykit.export import validate

    check = ctx.config.validate.enabled
    report = validate(record, ctx.data, reference=model, repeats=ctx.repeats, check=check,
                      tolerance=ctx.config.validate.tolerance_for(record.precision.value))
    verdict = Verdict.PASS if check else Verdict.NOT_VALIDATED  # with check, a miss has raised
    checks = report.tolerance.describe()
    if not check:
        checks = "validation switched off" + ("" if report.passed else " (missed: " + "; ".join(map(str, report.mismatches)) + ")")
    acc = report.accuracy
    row = ArtifactRow(
        file=file, format=record.format.value, runtime=record.format.runtime,
        precision=record.precision.value, quantization=record.quantization.value, sparsity=ctx.figures.sparsity,
        size_bytes=record.size_bytes, gzip_bytes=record.gzip_bytes,
        compression=ctx.original_figures.keras_gzip_bytes / record.gzip_bytes,
        accuracy=acc, accuracy_change=acc - ctx.original_figures.accuracy, agreement=report.agreement,
        max_abs_diff=report.max_abs_diff, latency_b1_ms=report.latency_b1_ms, throughput_b256=report.throughput_b256,
        verdict=verdict, checks=checks, detail=report.to_dict(),
    )
    return row, checks


def triton_step(model, ctx: Context):
    """A Triton repository of every shipped ONNX model (the MC model included) and a KServe manifest beside it."""
    from deploykit.export import write_triton_models

    files = [ctx.folder / artifact_name(f, q) for f, q in ctx.config.export.variants() if f is ExportFormat.ONNX]
    files += [ctx.folder / MC_FILE] if (ctx.folder / MC_FILE).is_file() else []
    if not files:
        return model, StepRecord("triton", Status.SKIPPED, "no ONNX model to serve (export onnx or the MC model)")
    names = write_triton_models(files, ctx.folder / TRITON_DIR, ctx.config.export.triton, class_names=list(ctx.data.class_names))
    return model, StepRecord("triton", Status.DONE, f"Triton repository {TRITON_DIR}/ ({', '.join(names)}) and kserve.yaml",
                             artifacts=[f"{TRITON_DIR}/{n}" for n in names] + ["kserve.yaml"])


def mc_step(model, ctx: Context):
    step = ctx.config.mc
    if not step.enabled:
        return model, _off("mc dropout")
    from deploykit.export.artifact import file_sizes
    from deploykit.graph import graph_from_model
    from deploykit.sparsity.tuning import outputs
    from deploykit.uncertainty import UncertaintyPredictor, compare, export_mc_onnx
    from deploykit.uncertainty.mc_graph import check_has_dropout

    try:
        check_has_dropout(graph_from_model(model))
    except UsageError as exc:
        return model, StepRecord("mc dropout", Status.SKIPPED, str(exc))
    path = ctx.folder / MC_FILE
    deterministic = outputs(model, ctx.data.x_test)
    det_accuracy = float(np.mean(deterministic.argmax(1) == ctx.data.y_test))
    record = export_mc_onnx(model, path, samples=step.samples, seed=step.seed, class_names=list(ctx.data.class_names),
                            metadata=metadata(model, ctx, det_accuracy))
    predictor = UncertaintyPredictor(path)
    mc = predictor.predict(ctx.data.x_test, batch_size=256)
    comparison = compare(ctx.data.y_test, deterministic, mc, plot_path=ctx.folder / RELIABILITY_PLOT)
    ctx.mc = comparison.to_dict()
    acc, allowed = comparison.mc.accuracy, ctx.config.validate.max_accuracy_drop
    checks = ""
    if ctx.config.validate.enabled:
        checks = f"MC accuracy within {100 * allowed:g} pt of the deterministic model ({det_accuracy:.4f})"
        if det_accuracy - acc > allowed:
            raise StepError(f"MC Dropout accuracy = {acc:.4f} (T = {step.samples}), {100 * (det_accuracy - acc):.2f} "
                            f"points below the deterministic {det_accuracy:.4f}, required a drop <= {100 * allowed:g} points")
    b1, b256 = timings(lambda v: predictor.predict(v), ctx.data.x_test, ctx.repeats)
    size, gz = file_sizes(path)
    ctx.artifacts.append(ArtifactRow(
        file=MC_FILE, format="onnx-mc", runtime="onnxruntime", precision="float32", quantization=record.quantization,
        sparsity=ctx.figures.sparsity, size_bytes=size, gzip_bytes=gz, compression=ctx.original_figures.keras_gzip_bytes / gz,
        accuracy=acc, accuracy_change=acc - ctx.original_figures.accuracy,
        agreement=float(np.mean(mc.predicted_class == deterministic.argmax(1))), max_abs_diff=None,
        latency_b1_ms=b1, throughput_b256=b256,
        verdict=Verdict.PASS if ctx.config.validate.enabled else Verdict.NOT_VALIDATED,
        checks=checks or "validation switched off", detail=record.to_dict(),
    ))
    reason = f"T = {step.samples} samples over {', '.join(record.dropout_layers)}"
    return model, StepRecord("mc dropout", Status.DONE, reason, artifacts=[MC_FILE, RELIABILITY_PLOT], checks=checks,
                             detail={"export": record.to_dict(), "comparison": ctx.mc})


def build_pipeline(config: OptimizeConfig) -> list[Step]:
    """The steps a config runs, in order (switched-off steps stay in the list and record why they did nothing).

    Sparsity runs before the fold: folding the input standardization divides the first kernel's rows
    by each feature's standard deviation, so near-constant features (the border pixels of digits)
    would get the largest weights and magnitude pruning would keep exactly the useless ones. Zeros
    survive the fold (it scales rows and columns), and compact follows it, where folded BatchNorm
    lets more dead neurons reach a Dropout as exact zeros.
    """
    steps = [Step("sparsity", sparsity_step), Step("fold", fold_step), Step("compact", compact_step),
             Step("save model", save_step)]
    variants = config.export.variants()
    if variants:
        steps += [Step(f"export {f.value} {q.value}", functools.partial(export_step, f, q)) for f, q in variants]
    else:
        steps.append(Step("export", lambda model, ctx: (model, _off("export"))))
    steps.append(Step("mc dropout", mc_step))
    if config.export.enabled and config.export.triton:
        steps.append(Step("triton", triton_step))  # after the MC model, which it serves too
    return steps


def timed(step: Step, model, ctx: Context) -> tuple[Any, StepRecord]:
    """Run one step; time it and measure the model before and after when it changed the model."""
    start = time.perf_counter()
    try:
        result, record = step.run(model, ctx)
    except UnsupportedLayerError as exc:  # the step cannot apply to this model's layers: skip it, the run goes on
        result, record = model, StepRecord(step.name, Status.SKIPPED, str(exc))
    record.seconds = round(time.perf_counter() - start, 2)
    if record.status is Status.DONE and result is not model:
        record.before = ctx.figures
        ctx.figures = record.after = model_figures(result, ctx.data)
    return result, record
