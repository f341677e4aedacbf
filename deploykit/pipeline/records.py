"""The pipeline's records: one per step, one per artifact, and the figures of a model between steps."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from deploykit.records import Record


class Status(enum.Enum):
    DONE = "done"
    SKIPPED = "skipped"  # switched off, or the model does not allow it (the reason says which)


class Verdict(enum.Enum):
    PASS = "pass"  # (a miss stops the run, so no artifact is ever left marked "fail")
    REFERENCE = "reference"  # the original model: what the others are compared with
    NOT_VALIDATED = "not validated"


@dataclass
class ModelFigures(Record):
    """A tf_keras model between steps: size, sparsity, accuracy."""

    params: int
    dense_macs: int  # multiply-adds of the Dense layers per example
    sparsity: float  # exact zeros over the Dense kernels
    accuracy: float  # test split
    keras_bytes: int  # saved .keras file (fresh copy, no optimizer state)
    keras_gzip_bytes: int


@dataclass
class LayerSparsityRow(Record):
    """One Dense layer's kernel at one point of the pipeline (for the per-layer sparsity plot)."""

    stage: str  # "original", "sparsity", "final"
    layer: str
    weights: int
    zeros: int
    sparsity: float


@dataclass
class ArtifactRow(Record):
    """One row of the report's table: an artifact measured in its runtime."""

    file: str  # name inside the output folder
    format: str  # keras | onnx | tflite | onnx-mc
    runtime: str  # tf_keras | onnxruntime | litert
    precision: str  # float32 | float16 | int8
    quantization: str  # the exporter's variant name: float32, float16, int8-dynamic, int8-static, int8-full, int8-weights
    sparsity: float
    size_bytes: int
    gzip_bytes: int
    compression: float  # original .keras gzip size / this gzip size
    accuracy: float | None
    accuracy_change: float | None  # vs the original model (in accuracy units: 0.01 = one point)
    agreement: float | None  # predicted classes equal to the Keras model it was exported from
    max_abs_diff: float | None
    latency_b1_ms: float | None  # median single-example call
    throughput_b256: float | None  # examples per second at batch 256
    verdict: Verdict
    checks: str = ""  # the tolerance applied, or why not validated
    detail: dict[str, Any] = field(default_factory=dict)  # the exporter's / validator's own record


@dataclass
class StepRecord(Record):
    """What one step did, and what it bought and cost."""

    step: str
    status: Status
    reason: str = ""  # why it was skipped; what it did otherwise
    seconds: float = 0.0
    before: ModelFigures | None = None  # the model it took (model-changing steps)
    after: ModelFigures | None = None  # the model it returned
    artifacts: list[str] = field(default_factory=list)  # files it wrote
    checks: str = ""  # the figure it was validated on
    detail: dict[str, Any] = field(default_factory=dict)  # the step function's own record
