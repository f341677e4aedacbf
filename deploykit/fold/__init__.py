"""Fold BatchNormalization, input standardization and Rescaling into Dense and convolution layers, exactly.

``fold_batchnorm(model)`` reads the model as a graph, folds every
BatchNormalization / Normalization / Rescaling it can (see
:mod:`deploykit.fold.rules` for the placements) in float64, casts the kernels
back to float32 and rebuilds a fresh tf_keras model. The input model is never
mutated.
"""

from __future__ import annotations

import numpy as np

from deploykit.core.graph import Graph, graph_from_model, id_columns, random_inputs, to_keras
from deploykit.core.layers import Role
from deploykit.errors import UsageError
from deploykit.fold.affine import NotFoldable, layer_affine
from deploykit.fold.report import FoldReport, Placement
from deploykit.fold.rules import fold_backward_pass, fold_forward_pass
from deploykit.io.keras3_api import keras3_boundary

__all__ = ["fold_batchnorm", "FoldReport", "Placement"]

#: How many random inputs the fold is checked on.
PROBE_SAMPLES = 1000


@keras3_boundary
def fold_batchnorm(model, *, unsafe: bool = False, through_dropout: bool = True) -> tuple[object, FoldReport]:
    """Return ``(folded_model, FoldReport)``; a model with nothing to fold comes back as a fresh equal copy.

    ``through_dropout=False`` keeps every BatchNorm that could only fold forward
    through a Dropout, so the folded model samples exactly like the original
    under MC Dropout (the deterministic outputs are equal either way).

    The report's ``max_abs_diff`` compares the two models' outputs on
    :data:`PROBE_SAMPLES` standard-normal inputs (seed 0), mapped through the
    inverse of the input standardization when the model has one, so they are
    on the raw-input scale the model expects.
    """
    from deploykit.backend import is_tf_keras_model

    if not is_tf_keras_model(model):
        raise UsageError(
            f"fold_batchnorm takes a tf_keras model, got {type(model).__name__}; load files with deploykit.load_model"
        )
    graph = graph_from_model(model, unsafe=unsafe)
    if len(graph.inputs) != 1:
        raise UsageError(f"fold_batchnorm takes a single-input model; {model.name!r} has {len(graph.inputs)} inputs")
    probe, probe_text = _probe_inputs(graph)
    order = {node.name: k for k, node in enumerate(graph.nodes)}
    folded = fold_backward_pass(graph)
    forward, unfolded = fold_forward_pass(graph, through_dropout)
    folded = sorted(folded + forward, key=lambda f: order[f.name])
    new_model = to_keras(graph)

    diff = np.abs(_predict(model, probe) - _predict(new_model, probe))
    report = FoldReport(
        folded,
        unfolded,
        int(model.count_params()),
        int(new_model.count_params()),
        float(diff.max()),
        PROBE_SAMPLES,
        probe_text,
    )
    return new_model, report


def _predict(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False), dtype=np.float64)


def _probe_inputs(graph: Graph) -> tuple[np.ndarray, str]:
    """Standard-normal inputs, on the raw scale when the model starts with an input standardization."""
    if id_columns(graph):
        return random_inputs(graph, PROBE_SAMPLES), "standard-normal inputs, random token ids where an Embedding reads"
    node = graph.consumers(next(iter(graph.inputs)))
    z = np.random.default_rng(0).standard_normal((PROBE_SAMPLES, *graph.input_shape))
    text = "standard-normal inputs"
    while len(node) == 1:
        spec = node[0].spec
        if spec.support.role is Role.NORMALIZATION:
            in_shape = graph.in_shape(node[0])
            try:
                affine = layer_affine(spec, in_shape)
            except NotFoldable:
                break
            z = affine.inverse_apply(z.reshape(PROBE_SAMPLES, *in_shape)).reshape(z.shape)
            text = f"standard-normal inputs mapped to the raw scale of {spec.class_name} {spec.name!r}"
            break
        if not (spec.support.identity_at_inference or spec.support.role is Role.RESHAPE):
            break
        node = graph.consumers(node[0].name)
    return z.astype(np.float32), text
