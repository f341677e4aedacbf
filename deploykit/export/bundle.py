"""``export_variant`` (one artifact) and ``export_bundle`` (every requested one, validated, with the table).

``export_variant`` is the one place a (format, quantization) becomes a file:
``deploykit export`` and the optimize pipeline both call it. The output folder
of ``export_bundle`` is built aside and moved into place only when every
artifact passed: a failure leaves no partial folder and an existing folder
untouched (it is replaced only with ``force``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.atomic import atomic_dir, write_text
from deploykit.core.graph import draw_inputs
from deploykit.core.multi_io import Layout
from deploykit.core.task import OutputKind, Task
from deploykit.errors import ConversionError, Mismatch, UsageError, ValidationError
from deploykit.export.artifact import ExportRecord, check_model_input
from deploykit.export.config import ExportConfig, ExportFormat, Precision, QuantConfig, Quantization, parse_enum
from deploykit.export.convert import DEFAULT_OPSET
from deploykit.export.metadata import ModelMetadata
from deploykit.export.onnx_export import export_onnx, quantize_onnx_file
from deploykit.export.runtimes import predict_batches
from deploykit.export.tflite_export import export_tflite
from deploykit.export.triton import write_triton_models
from deploykit.export.validate import ValidationReport, validate, validation_markdown
from deploykit.io.inputs import as_dataset, as_model
from deploykit.records import Record

JSON_FILE = "validation.json"
MARKDOWN_FILE = "validation.md"
TRITON_DIR = "triton"
GENERATED = "generated inputs"  # the name of the Dataset made up when no data is given
GENERATED_SAMPLES = 1000


@dataclass
class Unconverted(Record):
    """An artifact its converter could not make: rejected with the reason, the other formats still shipped."""

    file: str
    format: ExportFormat
    quantization: Quantization
    reason: str


@dataclass
class BundleReport(Record):
    """What ``export_bundle`` wrote into ``out`` (and ``unconverted``: what a converter refused)."""

    out: Path
    config: ExportConfig
    reference_accuracy: float | None  # None when validated on generated inputs (no data)
    exports: list[ExportRecord]
    validations: list[ValidationReport]
    triton_models: list[str]
    generated: bool = False  # validated on generated inputs (no data given)
    unconverted: list[Unconverted] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        note = None
        if self.generated:  # the reference's "accuracy" on generated inputs is 1 by construction (its RMSE 0)
            samples = self.validations[0].samples if self.validations else 0
            regression = bool(self.validations) and self.validations[0].task is Task.REGRESSION
            figure = (
                "'RMSE' is the error against the source model's predictions"
                if regression
                else "'accuracy' is agreement with the source model's classes"
            )
            note = f"No data given: each artifact is compared with the source model on {samples} generated inputs; "
            note += f"{figure}."
        return validation_markdown(self.validations, reference=note) + _unconverted_markdown(self.unconverted)


def artifact_name(fmt: ExportFormat, quantization: Quantization) -> str:
    """The one naming rule: ``model.onnx``, ``model_float16.tflite``, ``model_int8-dynamic.onnx``..."""
    return quantization.file_name(fmt)


def export_variant(
    model,
    fmt: ExportFormat | str,
    quantization: Quantization | str,
    path: str | os.PathLike,
    data=None,
    *,
    config: QuantConfig | None = None,
    opset: int = DEFAULT_OPSET,
    metadata: ModelMetadata | None = None,
    task: Task | None = None,
) -> ExportRecord:
    """Write one artifact, ``model`` as ``fmt`` in variant ``quantization``, to ``path``.

    ``data`` calibrates int8 variants (its training split; a Dataset, a data
    path, ``(x, y)`` or an array of inputs) and is not used by float variants.
    ``config`` holds the int8 knobs; ``metadata`` goes into ONNX files. ``task``
    (else a Dataset's, else read off the model) names the outputs (see export_onnx).
    """
    fmt = parse_enum(ExportFormat, fmt, "format")
    quant = parse_enum(Quantization, quantization, "quantization")
    if fmt not in quant.formats:
        raise UsageError(f"{quant.value!r} is not a {fmt.value} variant")
    calibration = data if quant.precision is Precision.INT8 else None
    task = task if task is not None else getattr(data, "task", None)
    if fmt is ExportFormat.ONNX:
        return export_onnx(
            model,
            path,
            opset=opset,
            quantization=quant,
            calibration_data=calibration,
            metadata=metadata,
            config=config,
            task=task,
        )
    return export_tflite(model, path, quantization=quant, representative_data=calibration, config=config, task=task)


def export_bundle(
    model,
    data,
    out: str | os.PathLike,
    config: ExportConfig | None = None,
    *,
    force: bool = False,
    metadata: ModelMetadata | None = None,
    progress: Callable[[str], None] | None = None,
    task: Task | None = None,
) -> BundleReport:
    """Export ``model`` as ``config`` asks into the folder ``out``; raise ValidationError if any artifact misses.

    ``model``: a Keras model, a model file, or a float32 ``.onnx`` file (then
    each ONNX variant is quantized from that file and compared with it in
    onnxruntime). ``data`` (a Dataset, a name or path, ``(x, y)``, or None)
    provides the int8 calibration samples (training split), the test split
    validation runs on, and the class names stored in the ONNX metadata.
    Without data, float variants are validated against the source model on
    generated inputs (as Optimum does); int8 variants need data.
    ``metadata.steps`` should say what was done to the model before (fold, prune...). ``task`` (else
    the data's, else read off the model) says whether a linear output is logits or a regression.
    """
    config = config or ExportConfig()
    say = progress or (lambda message: None)
    source = _Source.of(model, config, data)
    data = as_dataset(data, task=task, layout=source.layout) if data is not None else _generated(source, config, task)
    generated = data.name == GENERATED
    # a converter's file, neither data nor the user saying what it is: its files claim nothing
    unknown = generated and task is None and source.keras is None and source.task_and_output is None
    if source.keras is not None:  # input shape, outputs and task: the one data / model check
        task, kind = data.check_model(source.keras)
    else:
        task, kind = source.onnx_task(task or (None if generated else data.task), None if generated else data)
    data.check_input_shape((None, *source.input_shape), what=f"model {source.name!r}")
    out = Path(out)
    reference = predict_batches(source.reference_outputs(kind), data.x_test)  # probabilities (a binary head's [N, 2])
    reference_accuracy = (
        None if generated or task is Task.REGRESSION else float(np.mean(reference.argmax(axis=1) == data.y_test))
    )
    base = metadata or ModelMetadata()
    class_names = list(base.class_names) if generated else list(data.class_names)
    meta = dataclasses.replace(
        base,
        class_names=class_names,
        reference_accuracy=reference_accuracy,
        task=None if unknown else ModelMetadata.task_entry(task, kind),
    )

    with atomic_dir(out, force=force) as staging:
        exports, reports, unconverted = [], [], []
        for fmt, quant in config.variants():
            path = staging / artifact_name(fmt, quant)
            say(f"exporting {path.name} ({fmt.value} {quant.value})")
            try:
                record = source.export(fmt, quant, path, None if generated else data, config, meta)
            except ConversionError as exc:  # this format's converter refused the model: the others still ship
                unconverted.append(Unconverted(path.name, fmt, quant, str(exc)))
                say(f"rejected {path.name}: {exc}")
                continue
            say(f"validating {path.name} in {fmt.runtime}")
            report = validate(
                record,
                data,
                source.reference_outputs(kind),
                tolerance=config.tolerance_for(record.precision, task),
                repeats=config.repeats,
                check=False,
            )
            if not report.passed and not generated:  # int8: return the most harmful layers to float, then again
                record, report = _recovered(
                    source, (fmt, quant, path), data, config, meta, kind, task, record, report, say
                )
            say(report.summary())
            exports.append(record)
            reports.append(report)
        _raise_failures(reports)
        if not exports:  # no converter took the model: nothing to ship
            raise ConversionError("; ".join(f"{u.file}: {u.reason}" for u in unconverted))
        triton = []
        if config.triton:
            onnx_files = [r.path for r in exports if r.format is ExportFormat.ONNX]
            say(f"writing the Triton repository and KServe manifest ({len(onnx_files)} models)")
            triton = write_triton_models(
                onnx_files, staging / TRITON_DIR, config.triton, class_names=class_names or None
            )
        bundle = BundleReport(out, config, reference_accuracy, exports, reports, triton, generated, unconverted)
        write_text(staging / MARKDOWN_FILE, bundle.table())
        write_text(staging / JSON_FILE, json.dumps(_summary(bundle, source.name, data), indent=2) + "\n")
    return _moved(bundle, out)


#: Rows a converter's classifier file is run on to read what its output holds.
KIND_ROWS = 256


@dataclass
class _Source:
    """What a bundle exports from: a Keras model, or a float32 ONNX file quantized as it is."""

    name: str
    input_shape: tuple[int, ...]
    reference: Callable  # reference(x, training=False) -> probabilities
    export: Callable  # export(fmt, quant, path, data, config, meta) -> ExportRecord
    keras: Any = None  # the Keras model exported from (None for an ONNX file)
    task_and_output: tuple | None = None  # an ONNX file's deploykit.core.task, from its metadata (None: not written)
    path: Path | None = None  # the float32 ONNX file quantized (None for a Keras model)
    layout: Layout | None = None  # several inputs / outputs: how data rows pack them (an .npz may name them)

    @classmethod
    def of(cls, model, config: ExportConfig, data=None) -> _Source:
        """``data`` (as given) sizes the input axes a model file leaves unsized (deploykit.io.lengths)."""
        if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".onnx":
            return cls._onnx(Path(model), config)
        model = as_model(model, data=data)

        def export(fmt, quant, path, data, config, meta):
            return export_variant(
                model,
                fmt,
                quant,
                path,
                data,
                config=config.quantization,
                opset=config.opset,
                metadata=meta,
                task=meta.task_and_output()[0],
            )

        from deploykit.core.multi_io_model import layout_of

        return cls(
            model.name,
            check_model_input(model),
            lambda b, training=False: model(b, training=False),
            export,
            model,
            layout=layout_of(model),
        )

    def onnx_task(self, task: Task | None, data=None) -> tuple[Task, OutputKind]:
        """An ONNX file's (task, output kind): what its deploykit metadata says; a file without it (a converter's) is
        a regressor when ``task`` (the user's, else the data's) is one, else a classifier whose output holds what
        its values on ``data``'s validation rows say (probabilities, logits, a sigmoid or a logit unit:
        :func:`~deploykit.core.task.kind_of_outputs`); without data, probabilities (as files written before the
        metadata existed are read)."""
        from deploykit.core.task import kind_of_outputs

        if self.task_and_output is not None:
            return self.task_and_output
        if task is Task.REGRESSION:
            return Task.REGRESSION, OutputKind.VALUES
        if data is None:
            return Task.CLASSIFICATION, OutputKind.PROBABILITIES
        rows = data.x_val if len(data.x_val) else data.x_train
        return Task.CLASSIFICATION, kind_of_outputs(self.reference(rows[:KIND_ROWS]), data.num_classes)

    def reference_outputs(self, kind: OutputKind) -> Callable:
        """``reference(x)`` as the artifacts' main output holds it: a logits classifier's softmaxed."""
        from deploykit.core.evaluate import main_outputs

        if self.keras is None and self.task_and_output is not None:  # a deploykit file's main output is served
            return self.reference
        return lambda b, training=False: main_outputs(np.asarray(self.reference(b, training=False)), kind)

    @classmethod
    def _onnx(cls, path: Path, config: ExportConfig) -> _Source:
        from deploykit.export.runtimes import OnnxRunner

        if config.formats != (ExportFormat.ONNX,) or Quantization.FLOAT32 in config.quantize:
            raise UsageError(
                f"{path.name} is an ONNX file: it can be quantized to ONNX variants "
                "(--formats onnx --quantize float16,int8-dynamic,int8-static), not re-exported"
            )
        runner = OnnxRunner(path)

        def export(fmt, quant, out, data, config, meta):
            return quantize_onnx_file(path, out, quant, data, config=config.quantization, metadata=meta)

        from deploykit.export.metadata import read_metadata

        meta = read_metadata(runner.session)
        return cls(
            path.stem,
            tuple(runner.input_shape),
            lambda b, training=False: runner.predict(b),
            export,
            task_and_output=meta.task_and_output() if meta.task else None,
            path=path,
            layout=runner.layout,
        )


def _generated(source: _Source, config: ExportConfig, task: Task | None = None):
    """Without data: generated inputs, which only float variants can do with."""
    int8 = [q.value for q in config.quantize if q.precision is Precision.INT8 and q.needs_calibration]
    if int8:
        raise UsageError(f"{', '.join(int8)} needs data to calibrate (give data / --data)")
    ids = []
    if source.keras is not None:
        from deploykit.core.task import model_task
        from deploykit.data.tokens import id_columns_of

        task, kind = model_task(source.keras, task=task)
        ids = id_columns_of(source.keras)
    else:
        task, kind = source.onnx_task(task)
    return generated_dataset(
        source.reference_outputs(kind),
        source.input_shape,
        GENERATED_SAMPLES,
        config.quantization.seed,
        task,
        ids=ids,
    )


def generated_dataset(
    predict: Callable,
    input_shape: tuple[int, ...],
    n: int,
    seed: int,
    task: Task = Task.CLASSIFICATION,
    *,
    ids: list[tuple[slice, int]] = (),
):
    """``n`` standard-normal inputs labelled with the model's own classes (or predictions): validation without data.

    Where the model reads token ids (``ids``: columns and their Embedding's ``input_dim``,
    :func:`deploykit.data.tokens.id_columns_of`) it gets ids, uniform over the vocabulary, not floats.
    Accuracy on them is agreement with the source model, so int8 variants are
    held to the source's own classes within their accuracy-drop bound; a regressor's
    targets are its own predictions (RMSE against them is the error against the source).
    """
    from deploykit.data.dataset import Dataset

    rng = np.random.default_rng(seed)
    x = draw_inputs(rng, n, input_shape, ids)
    probs = predict_batches(lambda b: predict(b, training=False), x)
    if task is Task.REGRESSION:
        y = probs.astype(np.float32)
        y = y[:, 0] if y.shape[1] == 1 else y
        return Dataset(GENERATED, x, y, x[:0], y[:0], x, y, (), Task.REGRESSION)
    y = probs.argmax(axis=1).astype(np.int64)
    classes = tuple(str(i) for i in range(probs.shape[1]))
    return Dataset(GENERATED, x, y, x[:0], y[:0], x, y, classes)


def _recovered(source, variant, data, config: ExportConfig, meta, kind, task, record, report, say):
    """(record, report) after the per-layer int8 fallback (:mod:`deploykit.export.int8_layers`) when it applies
    and finds layers to leave in float, validated on the test split again; else the ones given."""
    from deploykit.export.int8_layers import recover_int8

    fmt, quant, path = variant
    tolerance = config.tolerance_for(record.precision, task)
    found = recover_int8(source, fmt, quant, path, data, config, meta, source.reference_outputs(kind), tolerance, say)
    if found is None or found[0] is None or not found[1].passed:
        return record, report
    kept, fallback = found
    kept = dataclasses.replace(kept, preparation=[*kept.preparation, f"int8 recovery: {fallback.describe()}"])
    again = validate(
        kept, data, source.reference_outputs(kind), tolerance=tolerance, repeats=config.repeats, check=False
    )
    return kept, again


def _raise_failures(reports: list[ValidationReport]) -> None:
    """One ValidationError naming every artifact that missed a bound, with all its mismatches."""
    failed = [r for r in reports if not r.passed]
    if failed:
        mismatches = [
            Mismatch(f"{r.artifact.name} {m.check}", m.measured, m.required, m.detail)
            for r in failed
            for m in r.mismatches
        ]
        raise ValidationError(", ".join(r.artifact.name for r in failed), mismatches, reports)


def _unconverted_markdown(unconverted: list[Unconverted]) -> str:
    """The rejected-by-the-converter lines under the validation table ('' when every artifact was made)."""
    if not unconverted:
        return ""
    lines = [f"- {u.file} ({u.format.value} {u.quantization.value}): rejected, {u.reason}" for u in unconverted]
    head = "\nNot exported (the converter refused the model; the other artifacts are unaffected):\n\n"
    return head + "\n".join(lines) + "\n"


def _summary(bundle: BundleReport, model_name: str, data) -> dict:
    """validation.json: file names relative to the folder, so the folder can move."""
    artifacts = []
    for record, report in zip(bundle.exports, bundle.validations):
        export, validation = record.to_dict(), report.to_dict()
        export["path"] = validation["artifact"] = record.path.name
        artifacts.append({"export": export, "validation": validation})
    return {
        "model": model_name,
        "data": data.summary(),
        "reference_accuracy": bundle.reference_accuracy,
        "config": bundle.config.to_dict(),
        "artifacts": artifacts,
        "triton_models": [f"{TRITON_DIR}/{name}" for name in bundle.triton_models],
        "rejected": [
            {"artifact": u.file, "format": u.format.value, "quantization": u.quantization.value, "reason": u.reason}
            for u in bundle.unconverted
        ],
        "table": MARKDOWN_FILE,
    }


def _moved(bundle: BundleReport, out: Path) -> BundleReport:
    """The report with its paths pointing into ``out`` instead of the staging folder."""
    exports = [dataclasses.replace(r, path=out / r.path.name) for r in bundle.exports]
    reports = [dataclasses.replace(r, artifact=out / r.artifact.name) for r in bundle.validations]
    return dataclasses.replace(bundle, exports=exports, validations=reports)
