"""Keras models as a small graph of layer specs, and back.

deploykit's steps (fold, compact, the Keras 3 import, the MC Dropout builder)
read a model as a :class:`Graph`: input nodes with their shapes, then one
:class:`Node` per layer (class name, config, weights, the names of its input
nodes, its per-sample output shape) in topological order. Steps rewrite the
graph (:meth:`Graph.replace`, :meth:`Graph.bypass`) and :func:`to_keras`
builds a fresh tf_keras model from it: a ``Sequential`` when the graph is a
single path, a functional model otherwise. The input model is never mutated.

One reader serves live tf_keras models and serialized configs of tf_keras and
Keras 3 alike (:func:`graph_from_config`): both record, per layer, the layers
whose outputs it is called on (``inbound_nodes``), in two spellings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from deploykit.core.layers import RECURRENT_LAYERS, TRAINING_NEUTRAL, LayerSupport, support_for
from deploykit.core.nested import model_ends
from deploykit.errors import UnsupportedLayerError


@dataclass
class LayerSpec:
    """One layer: its Keras class name, its config and its weights (copies)."""

    class_name: str
    config: dict
    weights: list[np.ndarray] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.class_name))

    @property
    def support(self) -> LayerSupport:
        return support_for({"class_name": self.class_name, "config": self.config}, unsafe=True)


#: Between a layer's name and the index of one of its outputs in a tensor's name: ``lstm:1`` is the second output
#: of ``lstm`` (an LSTM with ``return_state=True``: its state h); ``lstm`` alone is its first. No layer name
#: deploykit reads holds it: tf_keras, which every model is rebuilt in, refuses it (TensorFlow's tensors use it so).
OUTPUT_MARK = ":"


def tensor_name(layer: str, index: int = 0) -> str:
    """The name of output ``index`` of ``layer`` (its name alone for the first)."""
    return layer if index == 0 else f"{layer}{OUTPUT_MARK}{index}"


def source_of(tensor: str) -> tuple[str, int]:
    """(layer name, output index) of a tensor name: the inverse of :func:`tensor_name`."""
    layer, mark, index = tensor.rpartition(OUTPUT_MARK)
    return (layer, int(index)) if mark and index.isdigit() else (tensor, 0)


@dataclass
class Node:
    """A layer called on the tensors named in ``inputs`` (:func:`tensor_name`); ``shape`` is its per-sample output
    shape, ``shapes`` every output's when it has several (a recurrent layer returning its states)."""

    spec: LayerSpec
    inputs: list[str]
    shape: tuple | None = None
    shapes: list[tuple] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sources(self) -> list[str]:
        """The layers (and model inputs) whose outputs this node reads, by name."""
        return [source_of(i)[0] for i in self.inputs]


@dataclass
class Graph:
    """Inputs (name -> per-sample shape), nodes in topological order, output node names."""

    inputs: dict[str, tuple]
    nodes: list[Node]
    outputs: list[str]
    name: str = "deploykit_model"

    def node(self, name: str) -> Node:
        """The node of a layer, or of one of its outputs (:func:`tensor_name`)."""
        for node in self.nodes:
            if node.name == name:
                return node
        layer, index = source_of(name)
        if index:
            return self.node(layer)
        raise KeyError(name)

    def shape(self, name: str) -> tuple | None:
        """Per-sample shape of an input, or of a node's output (:func:`tensor_name`)."""
        if name in self.inputs:
            return self.inputs[name]
        node = self.node(name)
        if node.name == name:
            return node.shape
        return node.shapes[source_of(name)[1]] if node.shapes else None  # not read yet: unknown, as node.shape is

    def in_shape(self, node: Node) -> tuple | None:
        """The per-sample shape of a one-input node's input."""
        return self.shape(node.inputs[0])

    def consumers(self, name: str) -> list[Node]:
        """The nodes that take ``name``'s output (any of them, for a layer with several; a graph output counts as
        no node)."""
        return [n for n in self.nodes if name in n.inputs or name in n.sources]

    def fan_out(self, name: str) -> int:
        """How many places read ``name``'s output (any of them): consumers plus graph outputs."""
        ends = [o for o in self.outputs if o == name or source_of(o)[0] == name]
        return len(self.consumers(name)) + len(ends)

    def replace(self, name: str, spec: LayerSpec) -> None:
        """Swap a node's layer, keeping its edges."""
        self.node(name).spec = spec

    def bypass(self, name: str) -> None:
        """Remove a one-input node; its consumers (and graph outputs) read its input instead."""
        node = self.node(name)
        if len(node.inputs) != 1:
            raise ValueError(f"cannot bypass {name!r}: it has {len(node.inputs)} inputs")
        source = node.inputs[0]
        for other in self.consumers(name):
            other.inputs = [source if i == name else i for i in other.inputs]
        self.outputs = [source if o == name else o for o in self.outputs]
        self.nodes.remove(node)

    def ancestors(self, name: str) -> set[str]:
        """Every node and input upstream of ``name`` (not ``name`` itself)."""
        seen, todo = set(), list(self.node(name).inputs) if name not in self.inputs else []
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if current not in self.inputs:
                todo += self.node(current).inputs
        return seen

    def path(self) -> list[Node] | None:
        """The nodes when the graph is one path from its single input to its single output, else None."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            return None
        previous = next(iter(self.inputs))
        for node in self.nodes:
            if node.inputs != [previous]:
                return None
            previous = node.name
        return self.nodes if previous == self.outputs[0] else None

    @property
    def input_shape(self) -> tuple:
        """The shape of the single input (chain view)."""
        if len(self.inputs) != 1:
            raise UnsupportedLayerError(self.name, "model", f"has {len(self.inputs)} inputs; this step needs one")
        return next(iter(self.inputs.values()))

    def copy(self) -> Graph:
        return copy.deepcopy(self)


# --- reading --------------------------------------------------------------------------------


def graph_from_model(model, *, unsafe: bool = False) -> Graph:
    """Read a live tf_keras model (Sequential or functional) with its weights and output shapes."""
    kind = type(model).__name__
    try:
        inner = model.get_config()
    except NotImplementedError:
        inner = None
    if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
        raise UnsupportedLayerError(
            model.name, kind, "a subclassed model; deploykit reads Sequential and functional models"
        )
    if not getattr(model, "inputs", None):
        raise UnsupportedLayerError(model.name, kind, "the model is not built (give it an Input or call it once)")
    config = {"class_name": "Sequential" if kind == "Sequential" else "Functional", "config": inner}
    layers = {l.name: l for l in model.layers}
    graph = graph_from_config(config, unsafe=unsafe, model_name=model.name, input_shapes=_model_input_shapes(model))
    for node in graph.nodes:
        layer = layers[node.name]
        node.spec.config = copy.deepcopy(layer.get_config())
        node.spec.weights = [np.array(w) for w in layer.get_weights()]
        node.shape, node.shapes = _output_shapes(layer.output_shape, node.name, node.spec.class_name)
    return graph


def _output_shapes(shape, name: str, kind: str) -> tuple[tuple, list[tuple] | None]:
    """(the first output's per-sample shape, every output's when the layer has several)."""
    if not isinstance(shape, list):
        return _per_sample(shape, name, kind), None
    shapes = [_per_sample(s, name, kind) for s in shape]
    return shapes[0], shapes


def _model_input_shapes(model) -> dict[str, tuple]:
    names = list(getattr(model, "input_names", None) or [])
    shapes = [tuple(t.shape) for t in model.inputs]
    if len(names) != len(shapes):
        names = [t.name.split(":")[0] for t in model.inputs]
    return {n: _per_sample(s, n, "InputLayer") for n, s in zip(names, shapes)}


def _per_sample(shape, name: str, kind: str) -> tuple:
    dims = tuple(shape)[1:]
    if any(d is None for d in dims):
        raise UnsupportedLayerError(
            name, kind, f"output shape {tuple(shape)} has undefined dimensions besides the batch"
        )
    return tuple(int(d) for d in dims)


def graph_from_config(
    config: dict, *, unsafe: bool = False, model_name: str | None = None, input_shapes: dict[str, tuple] | None = None
) -> Graph:
    """Read a serialized Sequential / functional model config (tf_keras or Keras 3), without weights or shapes.

    Every layer is checked against the support table (custom code refused
    unless ``unsafe``); nested models and layers called more than once are refused.
    """
    kind = str(config.get("class_name", ""))
    inner = config.get("config") or {}
    name = str(model_name or inner.get("name") or "deploykit_model")
    layers = inner.get("layers") or []
    for layer in layers:
        support_for(layer, unsafe=unsafe)
        if layer.get("class_name") in ("Sequential", "Functional", "Model"):
            raise UnsupportedLayerError(
                str(layer.get("config", {}).get("name")),
                str(layer.get("class_name")),
                "a nested model; deploykit reads flat Sequential and functional models",
            )
    if kind == "Sequential":
        return _sequential(name, layers, inner, input_shapes)
    return _functional(name, layers, inner, input_shapes)


def _layer_name(layer: dict) -> str:
    return str(layer.get("config", {}).get("name") or layer.get("name"))


def _spec(layer: dict) -> LayerSpec:
    return LayerSpec(str(layer["class_name"]), copy.deepcopy(layer.get("config", {})))


def _sequential(name, layers, inner, input_shapes) -> Graph:
    shape = None
    body = []
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            c = layer.get("config", {})
            shape = c.get("batch_shape") or c.get("batch_input_shape")
        else:
            body.append(layer)
    if input_shapes:
        inputs = dict(input_shapes)
    else:
        cfg = body[0].get("config", {}) if body else {}
        shape = shape or cfg.get("batch_input_shape") or cfg.get("batch_shape") or inner.get("build_input_shape")
        inputs = {"input": tuple(shape[1:]) if shape else None}
    previous = next(iter(inputs))
    nodes = []
    for layer in body:
        nodes.append(Node(_spec(layer), [previous]))
        previous = nodes[-1].name
    return Graph(inputs, nodes, [previous], name)


def _functional(name, layers, inner, input_shapes) -> Graph:
    inputs, nodes = {}, []
    for layer in layers:
        lname = _layer_name(layer)
        if layer.get("class_name") == "InputLayer":
            c = layer.get("config", {})
            shape = c.get("batch_shape") or c.get("batch_input_shape")
            inputs[lname] = tuple(shape[1:]) if shape else None
            continue
        nodes.append(Node(_spec(layer), _parents(lname, layer)))
    if input_shapes:
        inputs = {n: input_shapes.get(n, s) for n, s in inputs.items()}
    ins = _endpoint_names(inner.get("input_layers"))
    if ins and set(ins) == set(inputs):
        inputs = {n: inputs[n] for n in ins}
    outputs = _endpoint_names(inner.get("output_layers"))
    return Graph(inputs, _topological(nodes, set(inputs)), outputs, name)


def _endpoint_names(value) -> list[str]:
    """Tensor names (:func:`tensor_name`) of a functional config's ``input_layers`` / ``output_layers`` (one,
    several, or a dict): an encoder model ending in its LSTM's states ends in ``lstm:1`` and ``lstm:2``."""
    return [tensor_name(str(end[0]), int(end[2]) if len(end) > 2 else 0) for end in model_ends(value)]


def _parents(name: str, layer: dict) -> list[str]:
    """The tensors (:func:`tensor_name`) ``layer`` is called on, from tf_keras or Keras 3 ``inbound_nodes``: a
    recurrent layer's ``initial_state`` after its sequence (tf_keras records them so already)."""
    kind = str(layer.get("class_name"))
    calls = layer.get("inbound_nodes") or []
    if len(calls) != 1:
        raise UnsupportedLayerError(name, kind, f"called {len(calls)} times; deploykit reads layers called once")
    call = calls[0]
    separate = support_for(layer, unsafe=True).tensor_args  # attention(query, value, key)
    if isinstance(call, dict):  # Keras 3: {"args": [tensor or [tensors]], "kwargs": {...}}
        args = call.get("args") or []
        kwargs = {k: v for k, v in (call.get("kwargs") or {}).items() if v is not None and v is not False}
        if kind in TRAINING_NEUTRAL:  # Keras 3 records training=True for them; they compute the same either way
            kwargs.pop("training", None)
        if separate:
            tensors, kwargs = _tensor_arguments(args[0] if len(args) == 1 and isinstance(args[0], list) else args,
                                                kwargs, lambda t: t)  # fmt: skip
            args = [tensors]
        states = kwargs.pop("initial_state", None) if kind in RECURRENT_LAYERS else None
        if kwargs or len(args) != 1:
            raise UnsupportedLayerError(name, kind, f"called with {kwargs or args[1:]}; deploykit reads plain calls")
        tensors = args[0] if isinstance(args[0], list) else [args[0]]
        tensors = [*tensors, *(states if isinstance(states, list) else [states] if states else [])]
        if not all(isinstance(t, dict) and t.get("class_name") == "__keras_tensor__" for t in tensors):
            raise UnsupportedLayerError(name, kind, "takes non-tensor arguments; deploykit reads plain calls")
        return [_read(t["config"]["keras_history"]) for t in tensors]
    if separate and len(call) == 1 and len(call[0]) > 3:  # tf_keras: the query, the others among its kwargs
        call, kwargs = _tensor_arguments([[*call[0][:3], {}]], call[0][3] or {}, lambda t: [*t[:3], {}])
        if kwargs:
            raise UnsupportedLayerError(
                name, kind, f"called with extra arguments {kwargs}; deploykit reads plain calls"
            )
    parents = []
    for entry in call:  # tf_keras: [[layer_name, node_index, tensor_index, kwargs], ...]
        if len(entry) > 3 and entry[3]:
            raise UnsupportedLayerError(
                name, kind, f"called with extra arguments {entry[3]}; deploykit reads plain calls"
            )
        parents.append(_read(entry))
    return parents


def _read(history) -> str:
    """The tensor a ``[layer, node index, tensor index, ...]`` read names (:func:`tensor_name`)."""
    return tensor_name(str(history[0]), int(history[2]))


#: The tensors an attention layer is called on, in the order its ``call`` takes them.
_ATTENTION_TENSORS = ("query", "value", "key")


def _tensor_arguments(tensors: list, kwargs: dict, read) -> tuple[list, dict]:
    """An attention call's tensors in order (query, value[, key]: one named as a keyword is moved into place,
    ``read`` writing it as the format writes a read), and the options left (inference's are dropped)."""
    tensors, kwargs = list(tensors), dict(kwargs)
    for position, key in enumerate(_ATTENTION_TENSORS):
        if key in kwargs and len(tensors) == position:
            tensors.append(read(kwargs.pop(key)))
    return tensors, {k: v for k, v in kwargs.items() if v is not None and v is not False}


def _topological(nodes: list[Node], ready: set[str]) -> list[Node]:
    """The nodes in an order where every node comes after its inputs (the config's order when it already is)."""
    done, order, pending = set(ready), [], list(nodes)
    while pending:
        progressed = False
        for node in list(pending):
            if all(i in done for i in node.sources):
                order.append(node)
                done.add(node.name)
                pending.remove(node)
                progressed = True
        if not progressed:
            missing = sorted({i for n in pending for i in n.sources} - done - {n.name for n in pending})
            raise UnsupportedLayerError(
                pending[0].name,
                pending[0].spec.class_name,
                f"its inputs {missing or [n.name for n in pending]} are not reachable from the model inputs",
            )
    return order


# --- building -------------------------------------------------------------------------------


def to_keras(graph: Graph):
    """Build a fresh tf_keras model from a graph, with its weights set: Sequential when it is a path."""
    from deploykit.backend import keras

    if graph.path() is not None:
        model = keras.Sequential(name=graph.name)
        model.add(keras.Input(shape=graph.input_shape, name=next(iter(graph.inputs))))
        for node in graph.nodes:
            layer = _layer(keras, node.spec)
            model.add(layer)
            _set_weights(layer, node.spec)
        return model
    tensors = {name: keras.Input(shape=shape, name=name) for name, shape in graph.inputs.items()}
    for node in graph.nodes:
        layer = _layer(keras, node.spec)
        call_layer(layer, node, tensors)
        _set_weights(layer, node.spec)
    outputs = [tensors[o] for o in graph.outputs]
    return keras.Model([tensors[n] for n in graph.inputs], outputs if len(outputs) > 1 else outputs[0], name=graph.name)


def call_layer(layer, node: Node, tensors: dict) -> None:
    """``layer`` called on the tensors of ``node``'s inputs as Keras calls it (one tensor, a list (a merge),
    separate arguments (attention's query, value, key), a sequence and its initial states), its outputs stored in
    ``tensors`` by name (:func:`tensor_name`). Both Keras's builders use it."""
    args = [tensors[i] for i in node.inputs]
    if node.spec.support.tensor_args:
        out = layer(*args)
    elif node.spec.class_name in RECURRENT_LAYERS and len(args) > 1:
        out = layer(args[0], initial_state=args[1:])
    else:
        out = layer(args if len(args) > 1 else args[0])
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    for index, tensor in enumerate(outs):
        tensors[tensor_name(node.name, index)] = tensor


def _layer(keras, spec: LayerSpec):
    cls = getattr(keras.layers, spec.class_name, None)
    if cls is None:
        raise UnsupportedLayerError(spec.name, spec.class_name, "no tf_keras layer of that name")
    config = dict(spec.config)
    config.pop("batch_input_shape", None)
    config.pop("input_shape", None)
    return cls.from_config(config)


def _set_weights(layer, spec: LayerSpec) -> None:
    if spec.weights:
        layer.set_weights(spec.weights)


def copy_model(model, *, unsafe: bool = False):
    """A fresh tf_keras copy of a model with the same weights (no optimizer state).

    A model the graph reader cannot take (a layer called twice, a TensorFlow op
    called with constants...) is copied by Keras itself, so the steps that do
    not need the graph (export) still run on it.
    """
    try:
        return to_keras(graph_from_model(model, unsafe=unsafe))
    except UnsupportedLayerError:
        from deploykit.backend import keras

        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone


#: Layers that read their input as ids below a vocabulary (layer class -> the config key of its size): an id out
#: of it is an error in TensorFlow (a gather, an assertion), not a value.
ID_READERS = {"Embedding": "input_dim", "CategoryEncoding": "num_tokens"}


def _vocabulary(readers) -> int | None:
    """The smallest vocabulary among ``readers`` (nodes) that read ids, else None."""
    sizes = [int(n.spec.config[ID_READERS[n.spec.class_name]]) for n in readers if n.spec.class_name in ID_READERS]
    return min(sizes) if sizes else None


def one_input(graph: Graph, name: str) -> Graph:
    """``graph`` seen from its input ``name`` alone: what :func:`random_inputs` and :func:`token_vocabulary` read
    (its shape, its consumers)."""
    return Graph({name: graph.inputs[name]}, graph.nodes, graph.outputs, graph.name)


def token_vocabulary(graph: Graph) -> int | None:
    """The smallest vocabulary of an Embedding (or a CategoryEncoding) reading the model input directly (its
    inputs are ids), else None."""
    return _vocabulary(graph.consumers(next(iter(graph.inputs))))


def id_columns(graph: Graph) -> list[tuple[slice, int]]:
    """Where the model's input holds token ids, each with the vocabulary they index: all of it when an Embedding
    (:data:`ID_READERS`) reads it directly, else the columns of each packed input one reads (a ``Reshape`` /
    ``Cropping1D`` / ``Reshape`` cut of the one packed input, :mod:`deploykit.core.multi_io_model`: a categorical
    column embedded beside numeric ones)."""
    vocabulary = token_vocabulary(graph)
    if vocabulary is not None:
        return [(slice(None), vocabulary)]
    width = graph.input_shape[0] if len(graph.input_shape) == 1 else None
    found = []
    for column in graph.consumers(next(iter(graph.inputs))):
        crops = [c for c in graph.consumers(column.name) if c.spec.class_name == "Cropping1D"]
        for crop in crops if column.spec.class_name == "Reshape" and width is not None else ():
            start, end = (int(v) for v in crop.spec.config["cropping"])
            vocabulary = _vocabulary([r for shaped in graph.consumers(crop.name) for r in graph.consumers(shaped.name)])
            if vocabulary is not None:
                found.append((slice(start, width - end), vocabulary))
    return found


def random_inputs(graph: Graph, n: int, seed: int = 0) -> np.ndarray:
    """``n`` float32 inputs to check a rebuild on: standard normal, with token ids where an Embedding reads them
    (:func:`id_columns`: an id outside the vocabulary is an error in TensorFlow, not a value)."""
    return draw_inputs(np.random.default_rng(seed), n, graph.input_shape, id_columns(graph))


def draw_inputs(rng, n: int, shape: tuple, ids: list[tuple[slice, int]]) -> np.ndarray:
    """``n`` float32 inputs of ``shape``: standard normal, and uniform token ids in each of ``ids``' columns."""
    x = rng.standard_normal((n, *shape))
    for columns, vocabulary in ids:
        x[:, columns] = rng.integers(0, vocabulary, x[:, columns].shape)
    return x.astype(np.float32)
