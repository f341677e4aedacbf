"""Fold BatchNormalization and input standardization into Dense layers, exactly.

``fold_batchnorm(model)`` reads the model as a chain, folds every
BatchNormalization / Normalization it can (see :mod:`deploykit.fold.rules`
for the placements) in float64, casts the Dense weights back to float32 and
rebuilds a fresh tf_keras model. The input model is never mutated.
"""

from __future__ import annotations

import numpy as np

from deploykit.chain import Chain, from_chain, to_chain
from deploykit.errors import UsageError
from deploykit.fold.affine import NotFoldable, layer_affine
from deploykit.fold.report import FoldedLayer, FoldReport, Placement, UnfoldedLayer
from deploykit.fold.rules import Node, fold_backward_pass, fold_forward_pass
from deploykit.layers import Role

__all__ = ["fold_batchnorm", "FoldReport", "FoldedLayer", "UnfoldedLayer", "Placement", "PROBE_SAMPLES"]

#: How many random inputs the fold is checked on.
PROBE_SAMPLES = 1000


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
        raise UsageError(f"fold_batchnorm takes a tf_keras model, got {type(model).__name__}; "
                         "load files with deploykit.load_model")
    chain = to_chain(model, unsafe=unsafe)
    layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]
    nodes = [Node(spec, tuple(l.input_shape[1:]), tuple(l.output_shape[1:])) for spec, l in zip(chain.layers, layers)]
    probe, probe_text = _probe_inputs(nodes, chain.input_shape)

    folded = fold_backward_pass(nodes)
    forward, unfolded = fold_forward_pass(nodes, through_dropout)
    order = {spec.name: k for k, spec in enumerate(chain.layers)}
    folded = sorted(folded + forward, key=lambda f: order[f.name])
    new_model = from_chain(Chain(chain.input_shape, [n.spec for n in nodes], name=chain.name))

    diff = np.abs(_predict(model, probe) - _predict(new_model, probe))
    report = FoldReport(folded, unfolded, int(model.count_params()), int(new_model.count_params()),
                        float(diff.max()), PROBE_SAMPLES, probe_text)
    return new_model, report


def _predict(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False), dtype=np.float64)


def _probe_inputs(nodes: list[Node], input_shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """Standard-normal inputs, on the raw scale when the chain starts with an input standardization."""
    z = np.random.default_rng(0).standard_normal((PROBE_SAMPLES, *input_shape))
    text = "standard-normal inputs"
    for node in nodes:
        if node.spec.support.role is Role.NORMALIZATION:
            try:
                affine = layer_affine(node.spec, node.in_shape)
            except NotFoldable:
                break
            z = affine.inverse_apply(z.reshape(PROBE_SAMPLES, *node.in_shape)).reshape(z.shape)
            text = f"standard-normal inputs mapped to the raw scale of {node.spec.class_name} {node.spec.name!r}"
            break
        if not (node.spec.support.identity_at_inference or node.spec.support.role is Role.RESHAPE):
            break
    return z.astype(np.float32), text
