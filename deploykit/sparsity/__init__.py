"""Sparse models: TF-MOT magnitude pruning, l1 sparsity, the accuracy-budgeted search, and exact removal of dead
neurons.

Importing this package does not import TensorFlow; the functions do.
"""

from deploykit.sparsity.config import L1Config, PruneConfig, SearchConfig, StructuredConfig
from deploykit.sparsity.dead_neurons import compact
from deploykit.sparsity.l1 import sparsify_l1
from deploykit.sparsity.magnitude import prune
from deploykit.sparsity.report import CompactReport, SparsityReport
from deploykit.sparsity.search import search_sparsity
from deploykit.sparsity.structured import prune_structured

__all__ = [
    "prune",
    "prune_structured",
    "StructuredConfig",
    "sparsify_l1",
    "compact",
    "search_sparsity",
    "SearchConfig",
    "PruneConfig",
    "L1Config",
    "SparsityReport",
    "CompactReport",
]
