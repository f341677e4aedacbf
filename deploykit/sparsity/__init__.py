"""Sparse models: TF-MOT magnitude pruning, l1 sparsity, and exact removal of dead neurons.

Importing this package does not import TensorFlow; the functions do.
"""

from deploykit.sparsity.config import L1Config, PruneConfig
from deploykit.sparsity.dead_neurons import compact
from deploykit.sparsity.l1 import sparsify_l1
from deploykit.sparsity.magnitude import prune
from deploykit.sparsity.report import CompactReport, LayerCompact, LayerSparsity, PruneSchedule, SparsityReport

__all__ = [
    "prune",
    "sparsify_l1",
    "compact",
    "PruneConfig",
    "L1Config",
    "SparsityReport",
    "CompactReport",
    "LayerSparsity",
    "LayerCompact",
    "PruneSchedule",
]
