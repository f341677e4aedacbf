"""``export_bundle``: every requested artifact, each validated in its runtime, plus the validation table.

The output folder is built aside and moved into place only when every
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

import numpy as np

from deploykit.atomic import atomic_dir, write_text
from deploykit.errors import Mismatch, ValidationError
from deploykit.export.artifact import ExportRecord
from deploykit.export.config import ExportConfig, ExportFormat, Precision, QuantizeOption
from deploykit.export.metadata import ModelMetadata
from deploykit.export.onnx_export import export_onnx
from deploykit.export.runtimes import predict_batches
from deploykit.export.tflite_export import export_tflite
from deploykit.export.triton import write_triton_repository
from deploykit.export.validate import ValidationReport, validate, validation_markdown
from deploykit.records import Record

JSON_FILE = "validation.json"
MARKDOWN_FILE = "validation.md"
TRITON_DIR = "triton"
RUNTIME = {ExportFormat.ONNX: "onnxruntime", ExportFormat.TFLITE: "LiteRT"}


@dataclass
class BundleReport(Record):
    """What ``export_bundle`` wrote into ``out``."""

    out: Path
    config: ExportConfig
    reference_accuracy: float
    exports: list[ExportRecord]
    validations: list[ValidationReport]
    triton_models: list[str]

    def table(self) -> str:
        return validation_markdown(self.validations)


def artifact_name(fmt: ExportFormat, option: QuantizeOption) -> str:
    """``model.onnx``, ``model_float16.tflite``, ``model_int8.onnx``..."""
    return f"model{option.file_suffix}{fmt.suffix}"


def export_bundle(
    model,
    data,
    out: str | os.PathLike,
    config: ExportConfig | None = None,
    *,
    force: bool = False,
    metadata: ModelMetadata | None = None,
    progress: Callable[[str], None] | None = None,
) -> BundleReport:
    """Export ``model`` as ``config`` asks into the folder ``out``; raise ValidationError if any artifact misses.

    ``data`` provides the int8 calibration samples (training split), the test
    split validation runs on, and the class names stored in the ONNX
    metadata. ``metadata.steps`` should say what was done to the model
    before (fold, prune...).
    """
    config = config or ExportConfig()
    say = progress or (lambda message: None)
    data.check_model(model)
    out = Path(out)
    reference = predict_batches(lambda b: model(b, training=False), data.x_test)
    reference_accuracy = float(np.mean(reference.argmax(axis=1) == data.y_test))
    meta = dataclasses.replace(metadata or ModelMetadata(), class_names=list(data.class_names), reference_accuracy=reference_accuracy)

    with atomic_dir(out, force=force) as staging:
        exports, reports = [], []
        for fmt, option in config.variants():
            path = staging / artifact_name(fmt, option)
            say(f"exporting {path.name} ({fmt.value}, {option.for_format(fmt).value})")
            record = _export(model, data, path, fmt, option, config, meta)
            say(f"validating {path.name} in {RUNTIME[fmt]}")
            report = validate(record, data, model, tolerance=config.tolerance_for(record.precision),
                              repeats=config.repeats, check=False)
            say(report.summary())
            exports.append(record)
            reports.append(report)
        _raise_failures(reports)
        triton = []
        if config.triton:
            for record in exports:
                if record.format is ExportFormat.ONNX:
                    say(f"writing Triton model {record.path.stem}")
                    write_triton_repository(record.path, staging / TRITON_DIR, record.path.stem,
                                            max_batch_size=config.max_batch_size, class_names=list(data.class_names))
                    triton.append(record.path.stem)
        bundle = BundleReport(out, config, reference_accuracy, exports, reports, triton)
        write_text(staging / MARKDOWN_FILE, bundle.table())
        write_text(staging / JSON_FILE, json.dumps(_summary(bundle, model, data), indent=2) + "\n")
    return _moved(bundle, out)


def _export(model, data, path: Path, fmt: ExportFormat, option: QuantizeOption, config: ExportConfig, meta) -> ExportRecord:
    quant = option.for_format(fmt)
    calibration = data if quant.precision is Precision.INT8 else None
    if fmt is ExportFormat.ONNX:
        return export_onnx(model, path, opset=config.opset, quantization=quant, calibration_data=calibration,
                           metadata=meta, num_calibration=config.num_calibration, seed=config.seed)
    return export_tflite(model, path, quantization=quant, representative_data=calibration,
                         num_calibration=config.num_calibration, int8_io=config.int8_io and option is QuantizeOption.INT8,
                         seed=config.seed)


def _raise_failures(reports: list[ValidationReport]) -> None:
    """One ValidationError naming every artifact that missed a bound, with all its mismatches."""
    failed = [r for r in reports if not r.passed]
    if failed:
        mismatches = [Mismatch(f"{r.artifact.name} {m.check}", m.measured, m.required, m.detail) for r in failed for m in r.mismatches]
        raise ValidationError(", ".join(r.artifact.name for r in failed), mismatches, reports)


def _summary(bundle: BundleReport, model, data) -> dict:
    """validation.json: file names relative to the folder, so the folder can move."""
    artifacts = []
    for record, report in zip(bundle.exports, bundle.validations):
        export, validation = record.to_dict(), report.to_dict()
        export["path"] = validation["artifact"] = record.path.name
        artifacts.append({"export": export, "validation": validation})
    return {
        "model": model.name,
        "data": data.summary(),
        "reference_accuracy": bundle.reference_accuracy,
        "config": bundle.config.to_dict(),
        "artifacts": artifacts,
        "triton_models": [f"{TRITON_DIR}/{name}" for name in bundle.triton_models],
        "table": MARKDOWN_FILE,
    }


def _moved(bundle: BundleReport, out: Path) -> BundleReport:
    """The report with its paths pointing into ``out`` instead of the staging folder."""
    exports = [dataclasses.replace(r, path=out / r.path.name) for r in bundle.exports]
    reports = [dataclasses.replace(r, artifact=out / r.artifact.name) for r in bundle.validations]
    return dataclasses.replace(bundle, exports=exports, validations=reports)
