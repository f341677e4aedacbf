"""What every pipeline step shares: the run's read-only :class:`RunContext`, the :class:`Step` a runner calls, and
the measurements and budget checks steps make the same way (a model's figures, a saved .keras model's artifact row,
a try's row, the verdict of a row).

A step never mutates the model it takes nor the context: it returns a :class:`StepOutput`; the runner aggregates.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.evaluate import Budget, Metric, RegressionErrors, main_outputs
from deploykit.core.task import OutputKind, Task
from deploykit.data.dataset import Dataset
from deploykit.errors import Mismatch, UnsupportedLayerError
from deploykit.pipeline.config import OptimizeConfig
from deploykit.pipeline.nll import keras_nll
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
from deploykit.stats import rmse_increase

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
    made: tuple[StepOutput, ...] = ()  # what the steps before this one returned (the triton step reads them)

    @property
    def shipped(self) -> list[str]:
        """The files the steps before this one shipped (their records' artifacts), relative to the folder."""
        return [f for out in self.made for f in out.record.artifacts]

    @property
    def repeats(self) -> int:
        """Timed runs per latency figure: fewer under a time budget (a large model's 50 runs take minutes)."""
        repeats = self.config.validate.latency_repeats
        return repeats if self.config.plan.time_budget is None else min(repeats, BUDGET_REPEATS)

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
            "rmse_change": None if value is None else rmse_increase(original, value),
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


def model_figures(model, data: Dataset) -> ModelFigures:
    """Parameters, prunable kernel weights, sparsity, test accuracy (or a regressor's RMSE) and saved size of a
    tf_keras model."""
    from deploykit.core.evaluate import score
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
    from deploykit.core.evaluate import outputs
    from deploykit.export.artifact import file_sizes

    size, gz = file_sizes(ctx.folder / file)
    probs = main_outputs(outputs(model, ctx.data.x_test), ctx.kind)
    reference = main_outputs(outputs(ctx.original, ctx.data.x_test), ctx.kind) if model is not ctx.original else probs
    regression = ctx.task is Task.REGRESSION
    errors = RegressionErrors.between(probs, ctx.data.y_test) if regression else None
    value = errors.rmse if regression else float(np.mean(probs.argmax(1) == ctx.data.y_test))
    own = model is ctx.original
    val_probs = None if own else main_outputs(outputs(model, ctx.data.x_val), ctx.kind)
    test, val, missed = judge(ctx, probs, val_probs)
    nll_figures, nll_missed = keras_nll(probs, val_probs, ctx)
    if val is not None and nll_figures.get("validation"):
        val = dataclasses.replace(val, **nll_figures["validation"])
    missed = [*missed, *nll_missed]
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
        **nll_figures.get("test", {}),
        validation=val,
    )


def try_row(
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


def timed(step: Step, model, ctx: RunContext) -> StepOutput:
    """Run one step; time it, and measure the model before and after when it changed the model."""
    start = time.perf_counter()
    try:
        out = step.run(model, ctx)
    except UnsupportedLayerError as exc:  # the step cannot apply to this model's layers: skip it, the run goes on
        out = StepOutput(model, StepRecord(step.name, Status.SKIPPED, str(exc)))
    record = dataclasses.replace(out.record, seconds=round(time.perf_counter() - start, 2))
    if record.status is Status.DONE and out.model is not model:
        from deploykit.core.evaluate import outputs
        from deploykit.pipeline.confirm import change

        _, ci = change(
            outputs(out.model, ctx.data.x_test), outputs(model, ctx.data.x_test), ctx.data.y_test, ctx.metric
        )
        record = dataclasses.replace(
            record, before=ctx.figures, after=model_figures(out.model, ctx.data), ci95=ci.as_list()
        )
    return dataclasses.replace(out, record=record)
