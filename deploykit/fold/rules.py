"""Which placement folds where, asked of the layer table (``deploykit.core.layers``), as local graph rewrites.

Two passes over the graph (:mod:`deploykit.core.graph`):

1. backward: a foldable layer (BatchNorm, Normalization, Rescaling) whose
   producer is a linear Dense / Conv / DepthwiseConv / SeparableConv read by
   nothing else goes into that producer's output channels;
2. forward: the remaining foldable layers (several in a row compose) go into
   the inputs of the next Dense, or Conv where exact (valid padding, or no
   shift), carried through what the table says commutes with a per-channel
   map: dropout (identity), Flatten/Reshape (values move), average pooling
   (always), max pooling (when every scale is positive). Anything else on
   the way, or a fork (an output read by several layers), stops the fold:
   the layer stays and the report says why.
"""

from __future__ import annotations

import numpy as np

from deploykit.core.graph import Graph, LayerSpec, Node
from deploykit.core.layers import Absorb, Carry, Role
from deploykit.fold.affine import Affine, NotFoldable, fold_backward, fold_forward, layer_affine
from deploykit.fold.report import FoldedLayer, Placement, UnfoldedLayer


def n_params(spec: LayerSpec) -> int:
    return int(sum(w.size for w in spec.weights))


def _is_linear(spec: LayerSpec) -> bool:
    return spec.config.get("activation") in ("linear", None)


def _describe(spec: LayerSpec) -> str:
    return f"{spec.class_name} {spec.name!r}"


def fold_backward_pass(graph: Graph) -> list[FoldedLayer]:
    """Fold each foldable layer into the linear kernel layer right before it (``graph`` is edited)."""
    folded = []
    for node in list(graph.nodes):
        if not node.spec.support.folds_away or node.inputs[0] in graph.inputs:
            continue
        producer = graph.node(node.inputs[0])
        if (
            producer.spec.support.absorbs is Absorb.NONE
            or not _is_linear(producer.spec)
            or graph.fan_out(producer.name) != 1
        ):
            continue
        before = n_params(producer.spec)
        try:
            affine = layer_affine(node.spec, graph.in_shape(node))
            fold_backward(producer.spec, affine)
        except NotFoldable:
            continue  # the forward pass may still fold it, or says why not
        folded.append(
            FoldedLayer(
                node.name,
                node.spec.class_name,
                Placement.BACKWARD,
                producer.name,
                [],
                n_params(node.spec),
                before,
                n_params(producer.spec),
                affine.max_scale,
            )
        )
        graph.bypass(node.name)
    return folded


def fold_forward_pass(graph: Graph, through_dropout: bool = True) -> tuple[list[FoldedLayer], list[UnfoldedLayer]]:
    """Fold the remaining foldable layers into the next Dense / Conv (``graph`` is edited).

    With ``through_dropout=False`` a fold stops at dropout layers: exact at
    inference either way, but under MC Dropout sampling a BatchNorm shift folded
    past a Dropout is no longer dropped with its unit.
    """
    folded, unfolded, done = [], [], set()
    for node in list(graph.nodes):
        if not node.spec.support.folds_away or node.name in done:
            continue
        group, through, target, reason = _walk_forward(graph, node, through_dropout)
        done.update(g.name for g, _ in group)
        if target is None:
            unfolded += [UnfoldedLayer(g.name, g.spec.class_name, reason) for g, _ in group]
            continue
        node_t, before = target
        folded += [
            FoldedLayer(
                g.name,
                g.spec.class_name,
                Placement.FORWARD,
                node_t.name,
                through,
                n_params(g.spec),
                before,
                n_params(node_t.spec),
                own.max_scale,
            )
            for g, own in group
        ]
        for g, _ in group:
            graph.bypass(g.name)
    return folded, unfolded


def _walk_forward(graph: Graph, start: Node, through_dropout: bool):
    """From a foldable node, compose foldable layers until a kernel takes them or something stops them.

    Returns the composed nodes (each with its own map), the layers passed
    through, ``(target, its params before)`` (None if the fold stopped) and the
    reason it stopped.
    """
    try:
        affine = layer_affine(start.spec, graph.in_shape(start))
    except NotFoldable as exc:
        return [(start, None)], [], None, str(exc)
    group, through, current = [(start, affine)], [], start
    while True:
        readers = graph.consumers(current.name)
        if not readers:
            return group, through, None, "no Dense follows it"
        if graph.fan_out(current.name) != 1:
            return (
                group,
                through,
                None,
                (
                    f"the output of {_describe(current.spec)} feeds {graph.fan_out(current.name)} "
                    "layers (a fork): folding into one branch would change the others"
                ),
            )
        node = readers[0]
        support = node.spec.support
        if len(node.inputs) != 1:
            return group, through, None, f"followed by {_describe(node.spec)}, which merges several inputs"
        if support.folds_away:
            try:
                own = layer_affine(node.spec, graph.in_shape(node))
            except NotFoldable:
                return group, through, None, f"followed by {_describe(node.spec)}, which cannot be folded"
            affine = affine.then(own)
            group.append((node, own))
        elif support.role is Role.DROPOUT and not through_dropout:
            return (
                group,
                through,
                None,
                (
                    f"followed by {_describe(node.spec)}; folding through it would change "
                    "MC Dropout sampling (through_dropout=False)"
                ),
            )
        elif support.carries is not Carry.STOP:
            try:
                affine = _carry(affine, support.carries, node)
            except NotFoldable as exc:
                return group, through, None, f"cannot pass {_describe(node.spec)}: {exc}"
            through.append(node.name)
        elif support.absorbs is Absorb.BOTH:
            before = n_params(node.spec)
            try:
                fold_forward(affine, node.spec)
            except NotFoldable as exc:
                return group, through, None, f"cannot go into {_describe(node.spec)}: {exc}"
            return group, through, (node, before), ""
        elif support.role in (Role.ACTIVATION, Role.DENSE, Role.CONV):
            return (
                group,
                through,
                None,
                f"followed by {_describe(node.spec)}, which is not linear, before any Dense or Conv",
            )
        else:
            return (
                group,
                through,
                None,
                (
                    f"followed by {_describe(node.spec)}, which a per-channel map does not pass "
                    "exactly, before any Dense or Conv"
                ),
            )
        current = node


def _carry(affine: Affine, carry: Carry, node: Node) -> Affine:
    """The map after ``node`` (whose output shape is ``node.shape``), per the table's rule for it."""
    if carry is Carry.IDENTITY:
        return affine
    if carry is Carry.RESHAPE:
        return affine.reshaped(node.shape)
    s, t = affine.last_axis(_describe(node.spec))  # pooling acts per channel
    if carry is Carry.MAX_POSITIVE and not np.all(s > 0):
        raise NotFoldable("max pooling commutes with the map only when every scale is positive")
    return Affine.broadcast(s, t, node.shape)
