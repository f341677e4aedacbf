"""Which ONNX nodes a Keras layer became: what ``QuantConfig.exclude`` and the int8 fallback name in an ONNX graph.

tf2onnx names most nodes after the TensorFlow ops they come from, so a Keras layer's name is a path segment of
its nodes' names (``sequential/dense_1/MatMul``). Not always: a DepthwiseConv2D with a bias (every depthwise conv
after the BatchNorm fold: MobileNetV2's seventeen) becomes one ``Conv`` node of a generated name (``Conv__341``)
reading a const-folded kernel (``const_fold_opt__429``); only its bias still carries the layer's name
(``model/block_1_depthwise/BiasAdd/ReadVariableOp:0``). An untrained model hides this: its folded biases are zero,
TensorFlow's graph optimizer drops the zero BiasAdd before tf2onnx sees it, and the Conv keeps the op's name
(``model/block_1_depthwise/depthwise``). So a layer's nodes are those named after it and the weighted nodes
reading a weight named after it (:func:`layer_nodes`).
"""

from __future__ import annotations

from collections import Counter

from deploykit.errors import UsageError

#: ONNX ops that read a layer's kernel (and bias) as constant inputs after the activation.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def layer_nodes(proto, name: str, weights: dict[str, list[str]] | None = None) -> list[str]:
    """The names of the nodes of ``proto`` that ``name`` selects, in graph order: a node's own name, a Keras layer
    name as a path segment of a node's name, or of a weight a weighted node reads as its own
    (:func:`own_weights`; pass them when selecting several names in one graph)."""
    weights = own_weights(proto) if weights is None else weights
    return [
        n.name
        for n in proto.graph.node
        if n.name
        and (n.name == name or name in n.name.split("/") or any(name in w.split("/") for w in weights.get(n.name, ())))
    ]


def own_weights(proto) -> dict[str, list[str]]:
    """{weighted node's name: the initializers it reads as its own}: its kernel (input 1), and any other constant
    input no other weighted node reads. tf2onnx stores equal constants once (two layers' zero biases become one
    initializer named after one of them), so a shared bias names no layer; a shared kernel is one layer called
    twice, whose nodes are all that layer's."""
    initializers = {t.name for t in proto.graph.initializer}
    weighted = [n for n in proto.graph.node if n.op_type in WEIGHTED_OPS and n.name]
    readers = Counter(i for n in weighted for i in set(n.input[1:]) if i in initializers)
    return {
        n.name: [i for k, i in enumerate(n.input) if k and i in initializers and (k == 1 or readers[i] == 1)]
        for n in weighted
    }


def excluded_nodes(proto, names: tuple[str, ...]) -> list[str]:
    """The graph's node names that ``names`` select (:func:`layer_nodes`), each once.

    A name that selects nothing is a UsageError (a typo must not go unnoticed).
    """
    selected: list[str] = []
    weights = own_weights(proto)
    for name in names:
        hits = layer_nodes(proto, name, weights)
        if not hits:
            raise UsageError(f"exclude: no ONNX node or Keras layer named {name!r} in the graph")
        selected += [h for h in hits if h not in selected]
    return selected
