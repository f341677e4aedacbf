"""Keras 3 activations tf_keras lacks (or computes differently), rebuilt from built-in tf_keras layers.

Keras 3 offers activations tf_keras does not have (``hard_silu`` / ``hard_swish``,
``hard_tanh``, ``log_sigmoid``, ``tanh_shrink``, ``celu``) and one it has under
another formula (``hard_sigmoid``: Keras 3 computes ``relu6(x + 3) / 6``, tf_keras
``clip(0.2 x + 0.5, 0, 1)``). A layer using one of them is imported as the same
layer with a linear activation followed by a few built-in layers that compute the
activation exactly (``Rescaling``, ``ReLU(max_value=...)``, ``Activation``,
``Multiply``, ``Add``): no code is run, every later step (fold, prune, export,
MC Dropout) sees layers of its table, and the import's output check still holds
the rebuilt model to the Keras 3 one.
"""

from __future__ import annotations

from collections.abc import Callable

from deploykit.core.graph import Graph, LayerSpec, Node

#: Keras 3 activations that are a tf_keras activation under another name (default arguments).
_RENAMED = {"celu": "elu"}  # celu(x, alpha=1) = elu(x)


def _layer(kind: str, name: str, **config) -> LayerSpec:
    return LayerSpec(kind, {"name": name, "trainable": True, "dtype": "float32", **config})


def _rescale(name: str, scale: float, offset: float = 0.0) -> LayerSpec:
    return _layer("Rescaling", name, scale=scale, offset=offset)


def _clip01(name: str) -> LayerSpec:
    return _layer("ReLU", name, max_value=1.0, negative_slope=0.0, threshold=0.0)


def _hard_sigmoid(x: str, base: str) -> list[Node]:
    """relu6(x + 3) / 6 = clip(x / 6 + 1/2, 0, 1)."""
    return [
        Node(_rescale(f"{base}_hs_affine", 1 / 6, 0.5), [x]),
        Node(_clip01(f"{base}_hs_clip"), [f"{base}_hs_affine"]),
    ]


def _hard_silu(x: str, base: str) -> list[Node]:
    """x * hard_sigmoid(x)."""
    gate = _hard_sigmoid(x, base)
    return gate + [Node(_layer("Multiply", f"{base}_hard_silu"), [x, gate[-1].name])]


def _hard_tanh(x: str, base: str) -> list[Node]:
    """clip(x, -1, 1) = 2 clip((x + 1) / 2, 0, 1) - 1."""
    return [
        Node(_rescale(f"{base}_ht_in", 0.5, 0.5), [x]),
        Node(_clip01(f"{base}_ht_clip"), [f"{base}_ht_in"]),
        Node(_rescale(f"{base}_ht_out", 2.0, -1.0), [f"{base}_ht_clip"]),
    ]


def _log_sigmoid(x: str, base: str) -> list[Node]:
    """log(sigmoid(x)) = -softplus(-x)."""
    return [
        Node(_rescale(f"{base}_ls_neg", -1.0), [x]),
        Node(_layer("Activation", f"{base}_ls_softplus", activation="softplus"), [f"{base}_ls_neg"]),
        Node(_rescale(f"{base}_ls_out", -1.0), [f"{base}_ls_softplus"]),
    ]


def _tanh_shrink(x: str, base: str) -> list[Node]:
    """x - tanh(x)."""
    return [
        Node(_layer("Activation", f"{base}_ts_tanh", activation="tanh"), [x]),
        Node(_rescale(f"{base}_ts_neg", -1.0), [f"{base}_ts_tanh"]),
        Node(_layer("Add", f"{base}_tanh_shrink"), [x, f"{base}_ts_neg"]),
    ]


#: Keras 3 activation name -> the nodes computing it from the layer's linear output (its name, a name prefix).
EXPANSIONS: dict[str, Callable[[str, str], list[Node]]] = {
    "hard_sigmoid": _hard_sigmoid,
    "hard_silu": _hard_silu,
    "hard_swish": _hard_silu,
    "hard_tanh": _hard_tanh,
    "log_sigmoid": _log_sigmoid,
    "tanh_shrink": _tanh_shrink,
}


def expand_activations(graph: Graph) -> set[str]:
    """Rewrite, in place, every layer whose Keras 3 activation tf_keras lacks; return the names of the nodes added.

    The layer keeps its weights and computes its linear part; the added nodes follow it and its
    consumers (and the graph outputs) read the last of them.
    """
    added: set[str] = set()
    for node in list(graph.nodes):
        activation = node.spec.config.get("activation")
        if not isinstance(activation, str):
            continue
        if activation in _RENAMED:
            node.spec.config["activation"] = _RENAMED[activation]
        elif activation in EXPANSIONS:
            node.spec.config["activation"] = "linear"
            new = EXPANSIONS[activation](node.name, node.name)
            for n in new:
                n.shape = node.shape
            _insert_after(graph, node, new)
            added |= {n.name for n in new}
    return added


def _insert_after(graph: Graph, node: Node, new: list[Node]) -> None:
    """Put ``new`` right after ``node``; whatever read ``node`` (but the new nodes) reads the last new node."""
    last, inside = new[-1].name, {n.name for n in new}
    for other in graph.nodes:
        if other.name not in inside:
            other.inputs = [last if i == node.name else i for i in other.inputs]
    graph.outputs = [last if o == node.name else o for o in graph.outputs]
    at = graph.nodes.index(node) + 1
    graph.nodes[at:at] = new
