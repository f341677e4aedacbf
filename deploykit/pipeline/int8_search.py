"""The int8 fallback: when an int8 variant misses the accuracy budget, try the others, keep the first that meets it.

The one place the pipeline decides which int8 variants exist and in what order they are tried
(:func:`int8_variants`) and how each is exported (:func:`export_int8`). Adding an exporter knob
(per-channel, a calibration method, layers kept in float) is a new field of :class:`Int8Variant`,
a new entry of the lists below and one more keyword in :func:`export_int8`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.errors import DeployKitError, UsageError
from deploykit.pipeline.config import ExportStep, Format, OnnxInt8, TfliteInt8

#: More calibration samples than configured, for the second static try (capped by the training split).
MORE_CALIBRATION = 4


@dataclass(frozen=True)
class Int8Variant:
    """One int8 setting of one format, named as the exporter names it."""

    format: Format
    quantization: str  # exporter's variant: "int8-dynamic" / "int8-static" (ONNX), "int8" / "dynamic" (TFLite)
    calibration_samples: int = 0  # 0: the variant needs none

    def describe(self) -> str:
        calibration = f", {self.calibration_samples} calibration samples" if self.calibration_samples else ""
        return f"{self.format.value} {self.quantization}{calibration}"


def int8_variants(fmt: Format, export: ExportStep) -> list[Int8Variant]:
    """The variants tried for one format, in order: the configured one, static with more calibration, then the rest.

    ONNX: dynamic (weights int8, activations quantized per call), static QDQ calibrated on the
    configured number of training samples, then on four times as many. TFLite: full integer
    calibrated likewise, then dynamic-range (int8 weights, float activations: the most accurate).
    """
    n, more = export.calibration_samples, MORE_CALIBRATION * export.calibration_samples
    if fmt is Format.ONNX:
        static = [Int8Variant(fmt, "int8-static", n), Int8Variant(fmt, "int8-static", more)]
        dynamic = [Int8Variant(fmt, "int8-dynamic")]
        order = dynamic + static if export.onnx_int8 is OnnxInt8.DYNAMIC else static + dynamic
    else:
        full = [Int8Variant(fmt, "int8", n), Int8Variant(fmt, "int8", more)]
        dynamic = [Int8Variant(fmt, "dynamic")]
        order = full + dynamic if export.tflite_int8 is TfliteInt8.FULL else dynamic + full
    return order


def export_int8(variant: Int8Variant, model, path: Path, data, *, opset: int, seed: int, metadata=None):
    """Export one int8 variant through the exporter; returns its ExportRecord."""
    from deploykit.export import export_onnx, export_tflite

    calibration = {"num_calibration": variant.calibration_samples} if variant.calibration_samples else {}
    if variant.format is Format.ONNX:
        return export_onnx(model, path, opset=opset, quantization=variant.quantization, calibration_data=data,
                           metadata=metadata, seed=seed, **calibration)
    return export_tflite(model, path, quantization=variant.quantization, representative_data=data, seed=seed,
                         **calibration)


@dataclass
class Int8Attempt:
    """One variant tried: its measured row (the pipeline's ArtifactRow), or why it could not be made."""

    variant: Int8Variant
    row: Any | None  # None when the export itself failed
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.row is not None and self.row.verdict.shipped


def search_int8(variants: list[Int8Variant], make: Callable[[Int8Variant], Any],
                measure: Callable[[Any], Any]) -> list[Int8Attempt]:
    """Export (``make``) and measure each variant in turn; stop at the first whose row passes.

    The last attempt is the one left on disk. An exporter error is that variant's failure (its
    message kept), not the run's; a bad option (UsageError) is the caller's mistake and propagates.
    """
    attempts = []
    for variant in variants:
        try:
            record = make(variant)
        except UsageError:
            raise
        except DeployKitError as exc:
            attempts.append(Int8Attempt(variant, None, str(exc)))
            continue
        attempts.append(Int8Attempt(variant, measure(record)))
        if attempts[-1].passed:
            break
    return attempts


def chosen(attempts: list[Int8Attempt]) -> Int8Attempt:
    """The attempt shipped (the passing one), else the most accurate one measured (reported as rejected)."""
    passing = [a for a in attempts if a.passed]
    if passing:
        return passing[0]
    measured = [a for a in attempts if a.row is not None and a.row.accuracy is not None]
    return max(measured, key=lambda a: a.row.accuracy) if measured else attempts[-1]
