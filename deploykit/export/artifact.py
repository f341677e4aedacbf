"""What an export wrote (:class:`ExportRecord`), and the checks and measurements every exporter shares."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

from deploykit.errors import UsageError
from deploykit.export.config import ExportFormat, Precision, Quantization
from deploykit.export.metadata import ModelMetadata
from deploykit.records import Record


@dataclass
class ExportRecord(Record):
    """One exported artifact."""

    path: Path
    format: ExportFormat
    quantization: Quantization
    precision: Precision
    size_bytes: int
    gzip_bytes: int
    input_name: str
    output_name: str
    input_shape: list[int]  # without the batch axis
    num_classes: int  # the output width: classes, or regression targets
    seconds: float  # conversion time
    preparation: list[str] = field(default_factory=list)  # int8 preparation steps (fold, weight clipping)
    calibration_samples: int = 0
    input_dtype: str = "float32"  # "int8" for full-integer TFLite with int8 I/O
    input_quantization: tuple[float, int] | None = None  # (scale, zero point) of an int8 input
    output_quantization: tuple[float, int] | None = None
    opset: int | None = None  # ONNX only
    metadata: ModelMetadata | None = None  # ONNX only (TFLite files carry none)


def file_sizes(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes, gzip -9 bytes) of a file: what it costs to store and to ship."""
    raw = Path(path).read_bytes()
    return len(raw), len(gzip.compress(raw, compresslevel=9, mtime=0))


def check_output_file(path: str | os.PathLike, fmt: ExportFormat) -> Path:
    """Refuse an output path that is a folder, sits under a file, or has the wrong suffix (nothing is written)."""
    path = Path(path)
    if path.suffix.lower() != fmt.suffix:
        raise UsageError(f"output path {path}: a {fmt.value} artifact needs the {fmt.suffix} suffix")
    if path.is_dir():
        raise UsageError(f"output path {path} is a folder; give a {fmt.suffix} file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"output path {path}: {parent} is a file, not a folder")
            break
    return path


def check_model_input(model) -> tuple[int, ...]:
    """The model's input shape without the batch axis; every axis must be known."""
    shape = tuple(model.input_shape[1:])
    if any(d is None for d in shape):
        raise UsageError(
            f"model {model.name!r}: input shape {shape} has unknown axes; export needs a fixed input shape"
        )
    return tuple(int(d) for d in shape)


def dense_sparsity(model) -> float:
    """Fraction of exact zeros over the Dense kernels (what pruning left)."""
    from deploykit.sparsity.report import kernel_sparsity, model_sparsity

    return float(model_sparsity(kernel_sparsity(model, {})))
