"""Appending nodes to an existing ONNX graph, opset-aware (13..18), for the post-hoc uncertainty edits.

Temperature scaling, the ensemble and the ``abstain`` output all edit graphs
that deploykit already exported (tf2onnx, quantized, or the MC graph), so they
work on an ``onnx.ModelProto`` rather than on a layer chain. ``GraphEditor``
gives fresh tensor names (never clashing with the graph's own), adds constants
as initializers, and emits the reductions whose ``axes`` moved from an
attribute to an input between opsets (ReduceSum at 13, the others at 18).
"""

from __future__ import annotations

import numpy as np

from deploykit.errors import UsageError

MIN_OPSET = 13
MAX_OPSET = 18
_TINY = float(np.finfo(np.float32).tiny)  # floor inside log(p): 0 * log(0) counts as 0, as the MC graph does


def default_opset(proto) -> int:
    """The version of the default ("" / ai.onnx) domain a model imports, or a UsageError outside 13..18."""
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or not MIN_OPSET <= version <= MAX_OPSET:
        raise UsageError(
            f"ONNX model imports opset {version} of the default domain; uncertainty edits support "
            f"{MIN_OPSET}..{MAX_OPSET}"
        )
    return int(version)


class GraphEditor:
    """Adds nodes and initializers to ``proto.graph`` in place, with names that cannot clash."""

    def __init__(self, proto, prefix: str):
        self.proto = proto
        self.graph = proto.graph
        self.opset = default_opset(proto)
        self.prefix = prefix
        self._taken = {t for n in self.graph.node for t in (*n.input, *n.output)}
        self._taken |= {i.name for i in (*self.graph.initializer, *self.graph.input, *self.graph.output)}
        self._count = 0

    def name(self, hint: str) -> str:
        while True:
            self._count += 1
            candidate = f"{self.prefix}/{hint}_{self._count}"
            if candidate not in self._taken:
                self._taken.add(candidate)
                return candidate

    def const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper

        out = output or self.name(op_type.lower())
        self.graph.node.append(helper.make_node(op_type, inputs, [out], name=self.name(f"{op_type}_node"), **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 0) -> str:
        """ReduceMean / ReduceSum / ReduceMax over ``axes``, in the form this opset requires."""
        axes_as_input = op_type == "ReduceSum" or self.opset >= 18
        if axes_as_input:
            return self.op(op_type, [x, self.const(list(axes), np.int64)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def entropy(self, p: str, class_axis: int) -> str:
        """-sum p log p over the class axis (natural log), 0 log 0 counted as 0."""
        plogp = self.op("Mul", [p, self.op("Log", [self.op("Max", [p, self.const(_TINY)])])])
        return self.op("Neg", [self.reduce("ReduceSum", plogp, [class_axis])])

    def log_probs(self, p: str) -> str:
        """log(max(p, tiny)): logits up to a per-row constant, which a softmax ignores."""
        return self.op("Log", [self.op("Max", [p, self.const(_TINY)])])

    def producer(self, tensor: str):
        """The node that outputs ``tensor`` (None for graph inputs and initializers)."""
        return next((n for n in self.graph.node if tensor in n.output), None)

    def output_info(self, name: str):
        for out in self.graph.output:
            if out.name == name:
                return out
        raise UsageError(
            f"the ONNX model has no output {name!r} (outputs: {', '.join(o.name for o in self.graph.output)})"
        )


def set_props(proto, entries: dict[str, str]) -> None:
    """Set (replace) metadata_props entries, leaving every other entry as it is."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for key, value in [*keep, *entries.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def get_prop(proto, key: str) -> str | None:
    return next((p.value for p in proto.metadata_props if p.key == key), None)


def retarget(graph, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` in every node (not in the graph's outputs), so ``old`` can be produced anew."""
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new


def toposort(graph) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs (ONNX requires it)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise UsageError(f"ONNX graph has a cycle or a missing tensor near node {pending[0].name!r}")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    copies = [type(n)() for n in ordered]
    for copy, n in zip(copies, ordered):
        copy.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def empty_optionals(graph) -> list:
    """``Optional`` nodes giving each optional-typed input of ``graph`` (but the model's own) no value.

    What a graph embedded in another (an ensemble member) or served where optional inputs cannot be
    declared (Triton) needs: the input's default then applies (an MC model's ``samples``: its default T).
    """
    from onnx import helper

    return [
        helper.make_node("Optional", [], [v.name], type=v.type.optional_type.elem_type)
        for v in graph.input
        if v.type.HasField("optional_type")
    ]
