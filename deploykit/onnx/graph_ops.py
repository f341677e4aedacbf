"""Edits of an exported graph that are not node appends: metadata entries, renaming a tensor, restoring topological
order, and giving optional inputs no value. Nodes are appended with :class:`deploykit.onnx.builder.GraphBuilder`.
"""

from __future__ import annotations

from deploykit.errors import UsageError


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
