"""The one ONNX graph builder: fresh names, constants, nodes, opset-aware reductions and the formulas several graphs
share.

Every graph deploykit writes by hand goes through :class:`GraphBuilder`: the MC Dropout graph, built from the
layer graph into a new model (``deploykit.uncertainty.mc_layers`` subclasses it with its seeds and masks), and the
post-hoc edits of an exported graph (temperature, ensemble merge, conformal sets, ``abstain``, std scale, the
binary head of the exporter), which append to an existing ``onnx.ModelProto`` in place. One builder means one
naming rule (``{prefix}/{hint}_{n}``, never clashing with a name the graph already holds), one form of each
reduction per opset (``axes`` moved from an attribute to an input: ReduceSum at 13, the others at 18) and one
entropy formula, whichever graph it lands in.
"""

from __future__ import annotations

import numpy as np

from deploykit.errors import UsageError

#: The default-domain opsets deploykit writes and edits: what tf2onnx 1.17 converts to and onnxruntime runs.
MIN_OPSET, MAX_OPSET = 13, 18
TINY = float(np.finfo(np.float32).tiny)  # floor inside log(p): 0 * log(0) counts as 0


def default_opset(proto) -> int:
    """The version of the default ("" / ai.onnx) domain a model imports, or a UsageError outside 13..18."""
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or not MIN_OPSET <= version <= MAX_OPSET:
        raise UsageError(
            f"ONNX model imports opset {version} of the default domain; uncertainty edits support "
            f"{MIN_OPSET}..{MAX_OPSET}"
        )
    return int(version)


class GraphBuilder:
    """Nodes and initializers appended with names that cannot clash, for a new graph or an existing one.

    With ``proto`` None the nodes and initializers collect in lists until :meth:`model`; with a ModelProto
    they are appended to ``proto.graph`` in place (use :meth:`editing`, which reads and checks its opset).
    """

    def __init__(self, opset: int, prefix: str = "", proto=None):
        self.opset = int(opset)
        self.proto = proto
        self.graph = None if proto is None else proto.graph
        self.nodes = [] if proto is None else self.graph.node
        self.inits = [] if proto is None else self.graph.initializer
        self._prefix = f"{prefix}/" if prefix else ""
        self._taken = set() if proto is None else _names_in(self.graph)
        self._count = 0
        self._shared: dict[tuple, str] = {}

    @classmethod
    def editing(cls, proto, prefix: str) -> GraphBuilder:
        """A builder appending to ``proto`` (its default-domain opset, 13..18), every new name under ``prefix/``."""
        return cls(default_opset(proto), prefix, proto)

    def name(self, hint: str) -> str:
        """A tensor name no node, initializer or graph input / output of this graph holds yet."""
        while True:
            self._count += 1
            candidate = f"{self._prefix}{hint}_{self._count}"
            if candidate not in self._taken:
                self._taken.add(candidate)
                return candidate

    def const(self, value, dtype=np.float32, name: str | None = None) -> str:
        """An initializer holding ``value``: a fresh name, or ``name`` (an input's default, as older opsets give it)."""
        from onnx import numpy_helper

        name = name or self.name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def shared_const(self, value, dtype=np.float32) -> str:
        """A scalar constant added once per builder (``True``, the log floor): every use reads the same one."""
        key = (repr(value), np.dtype(dtype).str)
        if key not in self._shared:
            self._shared[key] = self.const(value, dtype)
        return self._shared[key]

    def true(self) -> str:
        return self.shared_const(True, np.bool_)

    def op(self, op_type: str, inputs: list[str], output: str | None = None, n_out: int = 1, **attrs):
        """Append one node; its output name (or ``n_out`` names as a tuple). ``output`` names the one output."""
        from onnx import helper

        if output is not None and n_out != 1:
            raise ValueError(f"{op_type}: an output name is given for {n_out} outputs")
        outputs = [output] if output is not None else [self.name(op_type.lower()) for _ in range(n_out)]
        node_name = f"{outputs[0]}_node"
        if node_name in self._taken:
            node_name = self.name(f"{op_type}_node")
        self._taken.add(node_name)
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=node_name, **attrs))
        return outputs[0] if n_out == 1 else tuple(outputs)

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 0) -> str:
        """ReduceMean / ReduceSum / ReduceMax over ``axes``, in the form this opset requires."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.const(list(axes), np.int64)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def log_probs(self, p: str) -> str:
        """log(max(p, tiny)): logits up to a per-row constant, which a softmax ignores."""
        return self.op("Log", [self.op("Max", [p, self.shared_const(TINY)])])

    def entropy(self, p: str, class_axis: int) -> str:
        """-sum p log p over the class axis (natural log), 0 log 0 counted as 0."""
        plogp = self.op("Mul", [p, self.log_probs(p)])
        return self.op("Neg", [self.reduce("ReduceSum", plogp, [class_axis])])

    def producer(self, tensor: str):
        """The node that outputs ``tensor`` (None for graph inputs and initializers)."""
        return next((n for n in self.nodes if tensor in n.output), None)

    def output_info(self, name: str):
        """The edited graph's output ``name``, or a UsageError listing the outputs it has."""
        for out in self.graph.output:
            if out.name == name:
                return out
        raise UsageError(
            f"the ONNX model has no output {name!r} (outputs: {', '.join(o.name for o in self.graph.output)})"
        )

    def model(self, name: str, inputs: list, outputs: list, doc_string: str = ""):
        """The ``onnx.ModelProto`` of a new graph: these nodes and initializers, importing this opset only."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits, doc_string=doc_string)
        opsets = [helper.make_opsetid("", self.opset)]
        return helper.make_model(
            graph, opset_imports=opsets, producer_name="deploykit", ir_version=helper.find_min_ir_version_for(opsets)
        )


def _names_in(graph) -> set[str]:
    """Every tensor and node name of ``graph``: what a new name must not be."""
    names = {t for n in graph.node for t in (n.name, *n.input, *n.output)}
    return names | {i.name for i in (*graph.initializer, *graph.input, *graph.output)}
