"""``validate``: run an artifact in its own runtime on held-out data and hold it to its tolerance.

Reports, for a classifier (softmax or logits: its probabilities are compared),
accuracy, agreement of predicted classes and the largest absolute probability
difference against the Keras reference; for a regressor (``data.task``), the max
absolute error, max relative error and RMSE of its predictions against the
Keras reference and against the targets; file and gzip size, and the median
batch-1 latency and batch-256 throughput. Every failed bound is
collected first, then one :class:`~deploykit.errors.ValidationError` names
them all.

The runtime loads and runs the artifact in a child process
(:mod:`deploykit.export.isolated`), where latency is measured too: a native
crash there raises :class:`~deploykit.errors.RuntimeCrashError` (a
ValidationError) for that artifact instead of killing the caller.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploykit.core.evaluate import RegressionErrors
from deploykit.core.task import Task
from deploykit.errors import Mismatch, UsageError, ValidationError
from deploykit.export.artifact import ExportRecord, file_sizes
from deploykit.export.config import ExportFormat, Precision, Quantization, Tolerance
from deploykit.export.isolated import InProcess, shared_worker
from deploykit.export.runtimes import predict_batches, runner_class
from deploykit.export.sanity import check_declared_outputs, check_output_contract, without_reference
from deploykit.io.inputs import as_dataset, as_reference
from deploykit.records import Record
from deploykit.stats import rmse_increase

DEFAULT_BATCH_SIZES = (1, 256)
DEFAULT_REPEATS = 50
#: A speed ratio vs float32 below this is reported as slower (above it: within timing noise).
SLOWER_BELOW = 0.95


@dataclass
class Timing(Record):
    batch: int
    median_ms: float  # median wall time of one call
    per_second: float  # inputs per second at that batch size


@dataclass
class ValidationReport(Record):
    """One artifact measured in its runtime on the test split."""

    artifact: Path
    format: ExportFormat
    quantization: str
    precision: Precision
    samples: int
    accuracy: float | None  # None for a regressor
    reference_accuracy: float | None
    agreement: float | None  # None without a reference model
    max_abs_diff: float | None
    size_bytes: int
    gzip_bytes: int
    timings: list[Timing]
    tolerance: Tolerance
    mismatches: list[Mismatch] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # bounds that could not be checked
    task: Task = Task.CLASSIFICATION
    reference_errors: RegressionErrors | None = None  # a regressor's predictions against the Keras reference
    target_errors: RegressionErrors | None = None  # ... and against the test targets (its RMSE is the score)
    reference_rmse: float | None = None  # the Keras reference's test RMSE against the targets
    per_output: dict | None = (
        None  # several outputs (deploykit.core.multi_io): each one's figures, each held to the tolerance
    )
    outputs: np.ndarray | None = field(default=None, repr=False)  # the artifact's outputs on the split (not in JSON)
    latency_b1_ms: float | None = field(init=False)
    throughput_b256: float | None = field(init=False)
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        by_batch = {t.batch: t for t in self.timings}
        self.latency_b1_ms = by_batch[1].median_ms if 1 in by_batch else None
        self.throughput_b256 = by_batch[256].per_second if 256 in by_batch else None
        self.passed = not self.mismatches

    @property
    def accuracy_drop(self) -> float | None:
        if self.reference_accuracy is None or self.accuracy is None:
            return None
        return self.reference_accuracy - self.accuracy

    @property
    def rmse(self) -> float | None:
        """A regressor's test RMSE against the targets (None for a classifier)."""
        return None if self.target_errors is None else self.target_errors.rmse

    def summary(self) -> str:
        if self.task is Task.REGRESSION:
            return self._regression_summary()
        parts = [f"{self.artifact.name}: accuracy {self.accuracy:.4f}"]
        if self.agreement is not None:
            parts.append(f"agreement {self.agreement:.2%}, max diff {self.max_abs_diff:.2g}")
        parts.append(f"{self.gzip_bytes / 1024:.1f} KiB gzip")
        if self.latency_b1_ms is not None:
            parts.append(f"b1 {self.latency_b1_ms:.3f} ms")
        parts.append("ok" if self.passed else "FAILED: " + "; ".join(map(str, self.mismatches)))
        return ", ".join(parts)

    def _regression_summary(self) -> str:
        t = self.target_errors
        parts = [f"{self.artifact.name}: RMSE {t.rmse:.4g}, max abs error {t.max_abs_error:.4g} (targets)"]
        if self.reference_errors is not None:
            r = self.reference_errors
            parts.append(f"vs the source model: max abs {r.max_abs_error:.2g}, max rel {r.max_rel_error:.2g}")
        parts.append(f"{self.gzip_bytes / 1024:.1f} KiB gzip")
        parts.append("ok" if self.passed else "FAILED: " + "; ".join(map(str, self.mismatches)))
        return ", ".join(parts)


def validate(
    artifact: str | os.PathLike | ExportRecord,
    data,
    reference=None,
    *,
    tolerance: Tolerance | None = None,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    repeats: int = DEFAULT_REPEATS,
    threads: int | None = None,
    check: bool = True,
    isolated: bool = True,
) -> ValidationReport:
    """Validate an .onnx or .tflite artifact (a path or an :class:`ExportRecord`) on ``data.x_test``.

    ``reference`` is the Keras model it came from (agreement and max diff
    need it; without it only the accuracy is checked, against the
    ``reference_accuracy`` an ONNX file's metadata holds). ``tolerance``
    defaults to the variant's (:meth:`Tolerance.for_precision`). With
    ``check`` a missed bound raises ValidationError (carrying the report).
    ``isolated`` (the default) runs the runtime in the shared child process;
    a native crash there raises RuntimeCrashError whatever ``check`` says.
    """
    if (
        isinstance(batch_sizes, int)
        or not batch_sizes
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes)
    ):
        raise UsageError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UsageError(f"repeats must be a positive integer, got {repeats!r}")
    path, quantization = _describe(artifact)
    data = as_dataset(data)
    reference = as_reference(reference)
    runtime = shared_worker() if isolated else InProcess()
    opened = runtime.open(path, threads, describe=quantization is None)
    quantization = quantization or opened.quantization
    precision = _precision(artifact, quantization)
    data.check_input_shape((None, *opened.input_shape), what=f"artifact {path.name}")
    check_declared_outputs(path, opened, data.task)  # names, dtypes and ranks before any value is read
    x, y = data.x_test, data.y_test
    measured = runtime.measure(x, batch_sizes, repeats)
    check_output_contract(path, measured.outputs, data, opened.output_name)  # widths, before comparing values
    measured = dataclasses.replace(measured, outputs=_served(opened, measured.outputs, data))
    timings = [Timing(batch, 1e3 * seconds, batch / seconds) for batch, seconds in measured.seconds.items()]
    size, gz = file_sizes(path)
    tol = tolerance if tolerance is not None else Tolerance.for_precision(precision, data.task)
    head = (path, ExportFormat(opened.format), quantization, precision, len(x))
    ref = None if reference is None else _reference_outputs(reference, data, x)
    if data.task is Task.REGRESSION:
        report = _regression_report(head, measured.outputs, ref, y, size, gz, timings, tol, data.layout)
    else:
        report = _classification_report(
            head, measured.outputs, ref, y, opened.reference_accuracy, size, gz, timings, tol
        )
    report.outputs = measured.outputs  # paired intervals against the original need the rows, not only the figure
    if reference is None:  # nothing to compare with: what the artifact, the data and the file's metadata allow
        report.mismatches += without_reference(report, measured.outputs, tol)
        report.passed = not report.mismatches
    if check and report.mismatches:
        raise ValidationError(str(path), report.mismatches, report)
    return report


def _served(opened, outputs: np.ndarray, data) -> np.ndarray:
    """A classifier artifact's main output as probabilities: a converter's file (no deploykit task, no served output)
    may end in logits or one sigmoid / logit unit, read off its values (:func:`~deploykit.core.task.kind_of_outputs`);
    deploykit's own files serve probabilities already."""
    from deploykit.core.contract import OUTPUT_NAME, OUTPUT_NAMES
    from deploykit.core.evaluate import main_outputs
    from deploykit.core.task import kind_of_outputs

    if data.task is not Task.CLASSIFICATION or opened.output_kind is not None:
        return outputs
    if opened.output_name == OUTPUT_NAME or opened.output_name in OUTPUT_NAMES:
        return outputs
    return main_outputs(outputs, kind_of_outputs(outputs, data.num_classes))


def _reference_outputs(reference, data, x: np.ndarray) -> np.ndarray:
    """The reference's outputs as the artifact's main output holds them: a Keras logits classifier's softmaxed."""
    from deploykit.core.evaluate import main_outputs
    from deploykit.core.task import model_task

    out = predict_batches(lambda b: reference(b, training=False), x).astype(np.float32)
    if not hasattr(reference, "layers"):  # a callable (an ONNX runner): its outputs are the main output already
        return out
    return main_outputs(out, model_task(reference, task=data.task)[1])


def _classification_report(head, probs, ref, y, reference_accuracy, size, gz, timings, tol) -> ValidationReport:
    """Accuracy, and agreement and max probability difference against the reference (when given)."""
    accuracy = float(np.mean(probs.argmax(axis=1) == y))
    agreement = max_diff = None
    if ref is not None:
        reference_accuracy = float(np.mean(ref.argmax(axis=1) == y))
        agreement = float(np.mean(ref.argmax(axis=1) == probs.argmax(axis=1)))
        max_diff = float(np.max(np.abs(ref - probs)))
    mismatches, skipped = _check(tol, max_diff, agreement, accuracy, reference_accuracy)
    return ValidationReport(
        *head, accuracy, reference_accuracy, agreement, max_diff, size, gz, timings, tol, mismatches, skipped
    )


def _regression_report(head, pred, ref, y, size, gz, timings, tol, layout=None) -> ValidationReport:
    """Max absolute / relative error and RMSE of the predictions against the reference and the targets.

    With several outputs (``layout``) each output is also held to every bound on its own (its relative
    difference against its own size, its own RMSE increase); a miss names the output.
    """
    targets = RegressionErrors.between(pred, y)
    against = None if ref is None else RegressionErrors.between(pred, ref)
    reference_rmse = None if ref is None else RegressionErrors.between(ref, y).rmse
    mismatches, skipped = _check_regression(tol, against, targets, reference_rmse)
    per_output = None
    if layout is not None and layout.several_outputs:
        per_output = {}
        for t in layout.outputs:
            cols = layout.columns(t.name)
            p, r, yy = (None if a is None else np.asarray(a).reshape(len(a), -1)[:, cols] for a in (pred, ref, y))
            mine = None if r is None else RegressionErrors.between(p, r)
            own_rmse = None if r is None else RegressionErrors.between(r, yy).rmse
            missed, _ = _check_regression(tol, mine, RegressionErrors.between(p, yy), own_rmse)
            mismatches += [Mismatch(f"{t.name} {m.check}", m.measured, m.required, m.detail) for m in missed]
            per_output[t.name] = {
                "rmse": RegressionErrors.between(p, yy).rmse,
                "reference_rmse": own_rmse,
                "max_rel_diff": None if mine is None else mine.max_rel_error,
            }
    return ValidationReport(
        *head,
        None,
        None,
        None,
        None if against is None else against.max_abs_error,
        size,
        gz,
        timings,
        tol,
        mismatches,
        skipped,
        Task.REGRESSION,
        against,
        targets,
        reference_rmse,
        per_output,
    )


def _check_regression(
    tol: Tolerance, against: RegressionErrors | None, targets: RegressionErrors, reference_rmse: float | None
) -> tuple[list[Mismatch], list[str]]:
    """Every regression bound of ``tol`` (all collected); class bounds (agreement, accuracy) do not apply."""
    mismatches, skipped = [], []
    checks = (
        ("max_abs_diff", "max_abs_error", "largest |prediction - reference|"),
        ("max_rel_diff", "max_rel_error", "largest |prediction - reference| / max(|reference|, its RMS)"),
    )
    for bound, figure, what in checks:
        limit = getattr(tol, bound)
        if limit is None:
            continue
        if against is None:
            skipped.append(f"{bound} (no reference model)")
        elif getattr(against, figure) > limit:
            mismatches.append(Mismatch(bound, getattr(against, figure), f"<= {limit:g}", what))
    if tol.max_rmse_increase is not None:
        if reference_rmse is None:
            skipped.append("RMSE increase (no reference model)")
        elif (increase := rmse_increase(reference_rmse, targets.rmse)) > tol.max_rmse_increase + 1e-12:
            mismatches.append(
                Mismatch(
                    "rmse_increase",
                    increase,
                    f"<= {tol.max_rmse_increase:g}",
                    f"test RMSE {targets.rmse:.4g} vs reference {reference_rmse:.4g}",
                )
            )
    skipped += [
        f"{b} (a regressor has no classes)"
        for b in ("min_agreement", "max_accuracy_drop")
        if getattr(tol, b) is not None
    ]
    return mismatches, skipped


def _check(tol: Tolerance, max_diff, agreement, accuracy, reference_accuracy) -> tuple[list[Mismatch], list[str]]:
    """Every bound of ``tol`` against the measurements (all collected, none short-circuits)."""
    mismatches, skipped = [], []
    if tol.max_abs_diff is not None:
        if max_diff is None:
            skipped.append("max_abs_diff (no reference model)")
        elif max_diff > tol.max_abs_diff:
            mismatches.append(
                Mismatch("max_abs_diff", max_diff, f"<= {tol.max_abs_diff:g}", "largest |probability - reference|")
            )
    if tol.min_agreement is not None:
        if agreement is None:
            skipped.append("agreement (no reference model)")
        elif agreement < tol.min_agreement:
            mismatches.append(
                Mismatch("agreement", agreement, f">= {tol.min_agreement:g}", "predicted class equals the reference's")
            )
    if tol.max_accuracy_drop is not None:
        if reference_accuracy is None:
            skipped.append("accuracy drop (no reference accuracy)")
        elif reference_accuracy - accuracy > tol.max_accuracy_drop + 1e-12:
            mismatches.append(
                Mismatch(
                    "accuracy_drop",
                    reference_accuracy - accuracy,
                    f"<= {tol.max_accuracy_drop:g}",
                    f"accuracy {accuracy:.4f} vs reference {reference_accuracy:.4f}",
                )
            )
    return mismatches, skipped


def _describe(artifact) -> tuple[Path, str | None]:
    """(path, quantization) of a record; (path, None) for a file, whose quantization the runtime side reads."""
    if isinstance(artifact, ExportRecord):
        return Path(artifact.path), artifact.quantization.value
    path = Path(artifact)
    if not path.is_file():
        raise UsageError(f"artifact {path}: no such file")
    runner_class(path)  # a UsageError for an unknown suffix
    return path, None


def file_precision(path: str | os.PathLike) -> Precision:
    """What an artifact file computes in, read by the runtime worker (where a native crash is contained)."""
    path, _ = _describe(path)
    return Quantization(shared_worker().open(path, None, describe=True).quantization).precision


def _precision(artifact, quantization: str) -> Precision:
    if isinstance(artifact, ExportRecord):
        return artifact.precision
    return Quantization(quantization).precision


def validation_markdown(
    reports: list[ValidationReport], title: str = "Validation", reference: str | None = None
) -> str:
    """A markdown table of ``reports``; quantized variants are compared with their format's float32 artifact.
    ``reference``: the line said of the reference instead of its test figure (e.g. that inputs were generated)."""
    base = {r.format: r for r in reports if r.precision is Precision.FLOAT32}
    regression = bool(reports) and reports[0].task is Task.REGRESSION
    ref = next(
        (
            r.reference_rmse if regression else r.reference_accuracy
            for r in reports
            if (r.reference_rmse if regression else r.reference_accuracy) is not None
        ),
        None,
    )
    lines = [f"## {title}", ""]
    if reference is not None:
        lines += [reference, ""]
    elif ref is not None:
        lines += [
            f"Reference (source model) test {'RMSE' if regression else 'accuracy'}: {ref:.4f} on {reports[0].samples} "
            "test inputs.",
            "",
        ]
    figures = (
        "RMSE | max abs error | max abs diff | max rel diff"
        if regression
        else "accuracy | drop (pt) | agreement | max diff"
    )
    lines += [
        f"| artifact | quantization | {figures} | size KiB | gzip KiB | b1 ms | b256 /s "
        "| vs float32 (b1, b256) | tolerance | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in reports:
        speed, slower = _speed_vs(r, base.get(r.format))
        if slower:
            notes.append(f"- {r.artifact.name}: {r.quantization} is slower than float32 on this CPU ({slower}).")
        result = "ok" if r.passed else "FAILED: " + "; ".join(map(str, r.mismatches))
        if r.skipped:
            result += " (not checked: " + ", ".join(r.skipped) + ")"
        lines.append(
            f"| {r.artifact.name} | {r.quantization} | {_figures(r)} | {r.size_bytes / 1024:.1f} "
            f"| {r.gzip_bytes / 1024:.1f} | "
            f"{_fmt(r.latency_b1_ms, '.4f')} | {_fmt(r.throughput_b256, ',.0f')} | {speed} "
            f"| {r.tolerance.describe()} | {result} |"
        )
    per_output = [r for r in reports if r.per_output]
    if per_output:
        lines += ["", "Each output on its own (several outputs: each is held to the tolerance):", ""]
        lines += [
            f"- {r.artifact.name}: "
            + "; ".join(
                f"{name} RMSE {v['rmse']:.4g}"
                + ("" if v["reference_rmse"] is None else f" (Keras {v['reference_rmse']:.4g})")
                + ("" if v["max_rel_diff"] is None else f", max rel diff {v['max_rel_diff']:.2g}")
                for name, v in r.per_output.items()
            )
            for r in per_output
        ]
    if notes:
        lines += [
            "",
            f"Speed notes (measured on this machine; ratios below {SLOWER_BELOW:g} count as slower). int8 and float16 "
            "buy size first, speed only where this CPU's kernels favour them:",
            "",
            *notes,
        ]
    return "\n".join(lines) + "\n"


def _figures(r: ValidationReport) -> str:
    """The table's four figure cells: accuracy, drop, agreement, max diff; or RMSE, max abs error, and the diffs
    to Keras."""
    if r.task is Task.REGRESSION:
        against = r.reference_errors
        return (
            f"{r.target_errors.rmse:.4g} | {r.target_errors.max_abs_error:.4g} | "
            f"{'' if against is None else format(against.max_abs_error, '.2g')} | "
            f"{'' if against is None else format(against.max_rel_error, '.2g')}"
        )
    drop = "" if r.accuracy_drop is None else f"{100 * r.accuracy_drop:+.2f}"
    return f"{r.accuracy:.4f} | {drop} | {_fmt(r.agreement, '.2%')} | {_fmt(r.max_abs_diff, '.2g')}"


def _speed_vs(r: ValidationReport, base: ValidationReport | None) -> tuple[str, str]:
    """('1.20x, 0.80x', 'batch 256: 0.80x') for a quantized report against its float32 one."""
    if (
        base is None
        or r is base
        or r.precision is Precision.FLOAT32
        or r.latency_b1_ms is None
        or r.throughput_b256 is None
        or base.latency_b1_ms is None
        or base.throughput_b256 is None
    ):
        return "", ""
    b1 = base.latency_b1_ms / r.latency_b1_ms
    b256 = r.throughput_b256 / base.throughput_b256
    slower = [f"batch {b}: {s:.2f}x" for b, s in ((1, b1), (256, b256)) if s < SLOWER_BELOW]
    return f"{b1:.2f}x, {b256:.2f}x", ", ".join(slower)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)
