"""The pipeline's records: one per step, one per artifact, and the figures of a model between steps."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from deploykit.records import Record


class Status(enum.Enum):
    DONE = "done"
    SKIPPED = "skipped"  # switched off, or the model does not allow it (the reason says which)
    MISSED = "missed budget"  # nothing it tried met the accuracy budget; the model went on unchanged


class Verdict(enum.Enum):
    PASS = "pass"  # met its tolerance and the accuracy budget: shipped
    REJECTED = "rejected"  # missed one (the row keeps its numbers); its file is not shipped
    REFERENCE = "reference"  # the original model: what the others are compared with
    NOT_VALIDATED = "not validated"

    @property
    def shipped(self) -> bool:
        """The artifact's file is in the output folder."""
        return self is not Verdict.REJECTED


class Stage(enum.Enum):
    """Which search a :class:`Try` belongs to."""

    SPARSITY = "sparsity"
    INT8 = "int8"


@dataclass
class ModelFigures(Record):
    """A tf_keras model between steps: size, sparsity, and its test figure (accuracy, or a regressor's RMSE)."""

    params: int
    kernel_weights: int  # weights of the prunable kernels (Dense and conv): what sparsity and compact shrink
    sparsity: float  # exact zeros over the Dense kernels
    accuracy: float | None  # test split (None for a regressor)
    keras_bytes: int  # saved .keras file (fresh copy, no optimizer state)
    keras_gzip_bytes: int
    rmse: float | None = None  # a regressor's test RMSE against the targets (None for a classifier)


@dataclass
class SplitFigure(Record):
    """A model's figure on one split against the original's on the same rows: the change and its paired 95% interval."""

    split: str  # "validation" (where the budget is decided) or "test" (where it is confirmed, once)
    value: float  # accuracy, or a regressor's RMSE
    change: float  # accuracy change (0.01 = one point), or the RMSE change as a fraction of the original's
    ci95: list[float]  # [low, high] of the change (deploykit.stats)
    within: bool  # within the budget by the accept rule (validation) or the point estimate (test)
    nll: float | None = None  # a classifier's mean negative log-likelihood on the split (deploykit.pipeline.nll)
    nll_change: float | None = None  # vs the original model's on the same rows, as a fraction of it (0.02 = 2%)
    nll_export_change: float | None = None  # an exported file's vs the model it came from's (max_nll_increase)


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
    quantization: (
        str  # the exporter's variant name: float32, float16, int8-dynamic, int8-static, int8-full, int8-weights
    )
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
    checks: str = ""  # the tolerance applied, or why not validated; for a rejected artifact, what it missed
    detail: Any = None  # the exporter's / validator's own typed record
    rmse: float | None = None  # a regressor's test RMSE against the targets (accuracy and agreement are then None)
    rmse_change: float | None = None  # vs the original model's, as a fraction of it (0.05 = 5% more error)
    max_abs_error: float | None = None  # a regressor's largest |prediction - target| on the test split
    ci95: list[float] | None = None  # 95% interval of the paired test change (accuracy_change or rmse_change)
    validation: SplitFigure | None = None  # the same figure on the validation split, where the budget was decided
    speedup_b1: float | None = None  # the original model's float32 file in this runtime / this file, at batch 1
    speedup_batch: float | None = None  # ... at [plan] batch_size (deploykit.pipeline.objective: > 1 is faster)
    nll: float | None = None  # a classifier's test NLL (every shipped file: held to validate.max_nll_increase)
    nll_change: float | None = None  # vs the original model's test NLL (0.02 = 2% higher; held to max_nll_increase)
    nll_ci95: list[float] | None = None  # its paired bootstrap 95% interval (the point estimate is held to the limit)
    nll_export_change: float | None = None  # an exported file's test NLL vs the model it came from's
    nll_export_ci95: list[float] | None = None  # its paired bootstrap 95% interval (a test miss lies beyond the limit)


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
    detail: Any = None  # the step function's own typed record (made JSON only in the report)
    ci95: list[float] | None = None  # 95% interval of the paired test change after vs before (model-changing steps)


@dataclass
class Try(Record):
    """One setting tried to meet the accuracy budget: a sparsity target or an int8 variant."""

    stage: Stage
    setting: str  # e.g. "prune 90% (dense_1 93%, dense_2 84%)", "tflite int8 (1200 calibration samples)"
    accuracy: float | None  # validation split, where tries are decided (None: not measured, e.g. a crash)
    accuracy_change: float | None  # vs the original model on the same rows (0.01 = one point)
    gzip_bytes: int  # .keras gzip for sparsity tries, the artifact's gzip for int8 tries
    kept: bool  # met the budget and was chosen
    note: str = ""  # why not kept, or what was kept in float
    seconds: float = 0.0
    rmse: float | None = None  # a regressor's validation RMSE (accuracy is then None)
    rmse_change: float | None = None  # vs the original model's, as a fraction of it
    ci95: list[float] | None = None  # 95% interval of the paired validation change
    split: str = "validation"
    nll_change: float | None = None  # a sparsity try's validation NLL vs the original's (held to max_nll_increase)


@dataclass(frozen=True)
class StepOutput:
    """What a step returns: its model, its record and what it made; the runner aggregates these."""

    model: Any
    record: StepRecord
    artifacts: tuple[ArtifactRow, ...] = ()
    layer_sparsity: tuple[LayerSparsityRow, ...] = ()
    tries: tuple[Try, ...] = ()
    applied: tuple[str, ...] = ()  # what the step did to the model, for the artifacts' metadata ("prune(0.90)")
    mc: Any = None  # the MC Dropout comparison (deploykit.uncertainty's typed record)
    sections: tuple[str, ...] = ()  # report.md lines the step adds (its own ## section), after the MC section
    plots: tuple[str, ...] = ()  # plots it drew into the output folder, listed under report.md's ## Plots
