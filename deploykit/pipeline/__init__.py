"""``deploykit optimize``: the one-command pipeline from a trained model to validated artifacts.

``optimize(model, data, **options)`` keeps an accuracy budget (``max_accuracy_drop``) while it
searches the sparsity (TF-MOT pruning with distillation) or l1-sparsifies, folds BatchNorm,
removes dead neurons, exports ONNX and TFLite at float32 / float16 / int8,
builds the MC Dropout ONNX model, validates every artifact in its runtime and
writes report.json, report.md, PNG plots and the deploykit.toml that ran.
Importing this package does not import TensorFlow.
"""

from deploykit.pipeline.config import OptimizeConfig
from deploykit.pipeline.records import Status, Verdict
from deploykit.pipeline.run import OptimizeResult, build_pipeline, optimize
from deploykit.pipeline.tables import SparsityMethod

__all__ = [
    "optimize",
    "OptimizeConfig",
    "OptimizeResult",
    "SparsityMethod",
    "build_pipeline",
    "Status",
    "Verdict",
]
