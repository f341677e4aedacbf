"""Which placement folds where, asked of the layer table (``deploykit.layers``).

Two passes over the chain:

1. backward: a foldable layer right after a linear Dense goes into that Dense;
2. forward: the remaining foldable layers (several in a row compose) go into
   the next Dense, passing Dropout/AlphaDropout (identity at inference) and
   Flatten/Reshape (the per-element map is carried along). Anything else on
   the way (an activation, the end of the chain) stops the fold: the layer
   stays and the report says why.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploykit.chain import LayerSpec
from deploykit.fold.affine import Affine, NotFoldable, fold_backward, fold_forward, layer_affine
from deploykit.fold.report import FoldedLayer, Placement, UnfoldedLayer
from deploykit.layers import Role


@dataclass(eq=False)
class Node:
    """A chain layer with its per-sample input and output shapes."""

    spec: LayerSpec
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def folds_away(self) -> bool:
        return self.spec.support.folds_away


def n_params(spec: LayerSpec) -> int:
    return int(sum(w.size for w in spec.weights))


def _is_linear_dense(spec: LayerSpec) -> bool:
    return spec.support.role is Role.DENSE and spec.config.get("activation") in ("linear", None)


def _describe(spec: LayerSpec) -> str:
    return f"{spec.class_name} {spec.name!r}"


def fold_backward_pass(nodes: list[Node]) -> list[FoldedLayer]:
    """Fold each foldable layer that directly follows a linear Dense into it (``nodes`` is edited)."""
    folded = []
    i = 1
    while i < len(nodes):
        node, dense = nodes[i], nodes[i - 1]
        if node.folds_away and _is_linear_dense(dense.spec):
            before = n_params(dense.spec)
            try:
                affine = layer_affine(node.spec, node.in_shape)
                fold_backward(dense.spec, affine)
            except NotFoldable:
                i += 1  # the forward pass may still fold it, or says why not
                continue
            folded.append(FoldedLayer(node.spec.name, node.spec.class_name, Placement.BACKWARD, dense.spec.name, [],
                                      n_params(node.spec), before, n_params(dense.spec), affine.max_scale))
            del nodes[i]
            continue
        i += 1
    return folded


def fold_forward_pass(nodes: list[Node], through_dropout: bool = True) -> tuple[list[FoldedLayer], list[UnfoldedLayer]]:
    """Fold the remaining foldable layers into the next Dense (``nodes`` is edited).

    With ``through_dropout=False`` a fold stops at Dropout/AlphaDropout: exact at
    inference either way, but under MC Dropout sampling a BatchNorm shift folded
    past a Dropout is no longer dropped with its unit.
    """
    folded, unfolded = [], []
    i = 0
    while i < len(nodes):
        if not nodes[i].folds_away:
            i += 1
            continue
        group, through, dense, reason = _walk_forward(nodes, i, through_dropout)
        if dense is None:
            unfolded += [UnfoldedLayer(g.spec.name, g.spec.class_name, reason) for g, _ in group]
            i += len(group) + len(through)
            continue
        folded += [FoldedLayer(g.spec.name, g.spec.class_name, Placement.FORWARD, dense.node.spec.name, through,
                               n_params(g.spec), dense.before, dense.after, own.max_scale) for g, own in group]
        for g, _ in group:
            nodes.remove(g)
        i = nodes.index(dense.node) + 1
    return folded, unfolded


@dataclass
class _Target:
    node: Node
    before: int  # the Dense's parameters before and after the fold
    after: int


def _walk_forward(nodes: list[Node], i: int, through_dropout: bool = True) -> tuple[list[tuple[Node, Affine | None]], list[str], _Target | None, str]:
    """From the foldable ``nodes[i]``, compose foldable layers until a Dense takes them or something stops them.

    Returns the composed layers (each with its own map), the layers passed
    through, the Dense (None if the fold stopped) and the reason it stopped.
    """
    try:
        affine = layer_affine(nodes[i].spec, nodes[i].in_shape)
    except NotFoldable as exc:
        return [(nodes[i], None)], [], None, str(exc)
    group, through = [(nodes[i], affine)], []
    for node in nodes[i + 1:]:
        support = node.spec.support
        if node.folds_away:
            try:
                own = layer_affine(node.spec, node.in_shape)
            except NotFoldable:
                return group, through, None, f"followed by {_describe(node.spec)}, which cannot be folded"
            affine = affine.then(own)
            group.append((node, own))
        elif support.role is Role.DROPOUT and not through_dropout:
            return group, through, None, (f"followed by {_describe(node.spec)}; folding through it would change "
                                          "MC Dropout sampling (through_dropout=False)")
        elif support.identity_at_inference:
            through.append(node.spec.name)
        elif support.role is Role.RESHAPE:
            affine = affine.reshaped(node.out_shape)
            through.append(node.spec.name)
        elif support.role is Role.DENSE:
            before = n_params(node.spec)
            try:
                fold_forward(affine, node.spec)
            except NotFoldable as exc:
                return group, through, None, f"cannot go into {_describe(node.spec)}: {exc}"
            return group, through, _Target(node, before, n_params(node.spec)), ""
        else:
            return group, through, None, f"followed by {_describe(node.spec)}, which is not linear, before any Dense"
    return group, through, None, "no Dense follows it"
