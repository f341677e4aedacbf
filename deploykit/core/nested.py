"""Nested models and data augmentation in a model config (Keras 3 or tf_keras), flattened into one functional config.

The models users bring nest others: the TensorFlow image tutorial puts its
``data_augmentation`` Sequential inside the model, keras.io's transfer learning
calls a keras.applications base model on the input (``base_model(x,
training=False)``), ConvNeXt nests Sequential blocks. tf_keras and every
deploykit step read one flat graph, so :func:`flatten` rewrites the config,
without running anything from the file:

- a nested model (Sequential or functional, at any depth, called once) is
  replaced by its layers: its inputs read the tensors it was called on, and
  its readers read its output layers (:attr:`Nesting.path` records where each
  inlined layer sits, for its weights to be copied from inside the loaded
  model);
- a Sequential holding a nested model is first written as the functional
  model it is (one chain);
- a layer called several times (shared weights: a siamese branch) is written
  as one layer per call, each with the shared weights (:attr:`Nesting.copies`);
- data augmentation layers (:data:`INFERENCE_IDENTITY`: ``RandomFlip``,
  ``RandomRotation``, ``GaussianNoise``... which return their input at
  inference) are removed, their readers reading their input: a deployed model
  never augments, and the converters and runtimes have no such ops.

Inlined layers are made trainable (a frozen base is a training choice: the
fine-tuning of pruning trains the whole network). The two formats differ only
in how a layer's call is written (:func:`_call`, :func:`_reads`). The loaders
then check the flat model against the nested one on random inputs: the Keras 3
import (deploykit.keras3), tf_keras files and objects (deploykit.io.flat).
"""

from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import dataclass, field

from deploykit.errors import UnsupportedLayerError

log = logging.getLogger(__name__)

_TENSOR = "__keras_tensor__"
#: The class names of a (nested) model in a config.
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
#: Keras 3 layers that return their input unchanged at inference (``training=False``): data augmentation,
#: noise and regularization layers. Checked against Keras 3 itself in tests/keras3/test_nested.py.
INFERENCE_IDENTITY = frozenset(
    {
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
        "RandomBrightness",
        "RandomShear",
        "RandomPerspective",
        "RandomErasing",
        "RandomGaussianBlur",
        "RandomGrayscale",
        "RandomHue",
        "RandomSaturation",
        "RandomSharpness",
        "RandomPosterization",
        "RandomInvert",
        "RandomColorJitter",
        "RandomColorDegeneration",
        "RandomElasticTransform",
        "AugMix",
        "CutMix",
        "MixUp",
        "RandAugment",
        "GaussianNoise",
        "GaussianDropout",
        "ActivityRegularization",
    }
)
#: Call options a nested model may be called with: inference is what deploykit runs.
_CALL_OPTIONS = {"training": (False, True), "mask": (None,)}


@dataclass
class Nesting:
    """What :func:`flatten` did: where each inlined layer sits, and the layers it removed."""

    path: dict[str, tuple[str, ...]] = field(default_factory=dict)  # inlined layer -> the models it sits in
    removed: list[str] = field(default_factory=list)  # "name (Class)" of each augmentation layer removed
    copies: dict[str, str] = field(default_factory=dict)  # a shared layer's second, third... call -> that layer

    def __bool__(self) -> bool:
        return bool(self.path or self.removed or self.copies)

    def lines(self) -> list[str]:
        """One line for each thing the flattening did, as the progress and the optimize report say it."""
        models = sorted({outer for path in self.path.values() for outer in path})
        out = [f"nested models read as one graph: {', '.join(models)}"] if models else []
        out += [f"removed, as Keras does at inference: {', '.join(self.removed)}"] if self.removed else []
        shared = sorted(set(self.copies.values()))
        calls = {name: 1 + sum(1 for v in self.copies.values() if v == name) for name in shared}
        if shared:
            out.append(
                "shared layers read as one layer per call, each with the shared weights (compression then tunes "
                f"them apart): {', '.join(f'{name} ({calls[name]} calls)' for name in shared)}"
            )
        return out

    def say(self) -> None:
        say(self.lines())

    def source_layer(self, source, name: str):
        """The Keras 3 layer named ``name`` in the loaded ``source`` model, inside the models it sits in (for a
        shared layer's later call: the shared layer)."""
        name = self.copies.get(name, name)
        for outer in self.path.get(name, ()):
            source = source.get_layer(outer)
        return source.get_layer(name)


#: What flattening did to each loaded model (deploykit.io.models records it; the optimize report reads it).
_SAID: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: The deepest nesting read (keras.applications in a transfer-learning model is 1; a block in it, 2). A file nesting
#: hundreds of levels is refused by name before any recursive copy or rewrite of its config meets Python's limit.
MAX_DEPTH = 16


def flattening(config: dict, *, keras3: bool) -> list[str]:
    """The lines :func:`flatten` would say of a model config (its nested models, the augmentation it removes);
    the loader's first look at a config, so a nesting deeper than :data:`MAX_DEPTH` is refused here."""
    depth = nesting_depth(config)
    if depth > MAX_DEPTH:
        raise UnsupportedLayerError(
            layer_name(config),
            str(config.get("class_name")),
            f"models nested {depth} levels deep; deploykit reads up to {MAX_DEPTH}",
        )
    nesting = Nesting()
    flatten(copy.deepcopy(config), nesting, keras3=keras3)
    return nesting.lines()


def nesting_depth(config: dict) -> int:
    """How many models deep a config nests (0: a flat model), walked without recursion."""
    deepest, todo = 0, [(config, 0)]
    while todo:
        model, depth = todo.pop()
        deepest = max(deepest, depth)
        inner = model.get("config") if isinstance(model, dict) else None
        for layer in (inner.get("layers") if isinstance(inner, dict) else None) or []:
            if isinstance(layer, dict) and layer.get("class_name") in MODEL_CLASSES:
                todo.append((layer, depth + 1))
    return deepest


def say(lines: list[str]) -> None:
    """The progress lines of a flattening (INFO: what a user sees while a model loads)."""
    for line in lines:
        log.info(line)


def remember(model, lines: list[str]) -> None:
    """Keep what flattening did for ``model`` (the loaded model object), for :func:`flattened`."""
    if lines:
        _SAID[model] = list(lines)


def flattened(model) -> list[str]:
    """What flattening did when ``model`` was loaded (none when nothing, or for a model not loaded from a file)."""
    try:
        return list(_SAID.get(model, ()))
    except TypeError:  # not weak-referenceable: nothing was recorded for it
        return []


def flatten(config: dict, nesting: Nesting, *, keras3: bool) -> dict:
    """``config`` (a Keras 3 or tf_keras model config, rewritten in place) with nested models inlined and
    augmentation removed; ``config`` itself when it holds neither. ``keras3``: the config's format (the two
    link layers differently)."""
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list) or not any(_flattens(layer) or _shared(layer) for layer in layers):
        return config
    if config.get("class_name") == "Sequential":
        config = as_functional(config, keras3, need_shape=True)
    names = {layer_name(layer) for layer in config["config"]["layers"]}
    config["config"]["layers"] = _flat_layers(config, names, nesting, (), keras3)
    return config


def _flattens(layer: dict) -> bool:
    return layer.get("class_name") in MODEL_CLASSES or layer.get("class_name") in INFERENCE_IDENTITY


def _shared(layer: dict) -> bool:
    """A layer or a nested model called more than once (its weights shared between the calls)."""
    return len(layer.get("inbound_nodes") or []) > 1


def _unshare(config: dict, names: set[str], nesting: Nesting) -> None:
    """Each layer called k > 1 times (a siamese branch; the Keras docs' embedding of both the query and the value)
    as k layers, one per call: the first keeps its name, the others are named after it and get its weights
    (:attr:`Nesting.copies`); a nested model's later calls are renamed copies of it (:func:`_renamed_copy`). What
    read call j of it reads the j-th copy. Every deploykit step reads one call per layer; the artifacts hold the
    weights once per call, and compression tunes each copy on its own."""
    inner = config["config"]
    _bare_ends(inner)
    read = [r for layer in inner["layers"] for r in _reads(layer.get("inbound_nodes"))]
    layers, renames = [], {}
    for layer in inner["layers"]:
        if not _shared(layer):
            layers.append(layer)
            continue
        name = layer_name(layer)
        calls = layer["inbound_nodes"]
        # a nested model's node 0 is its own construction: its calls are nodes 1, 2... (a layer's: 0, 1...)
        nodes = sorted({int(h[1]) for h in [*read, *inner.get("output_layers", [])] if h[0] == name and len(h) > 1})
        nodes = nodes if len(nodes) == len(calls) else list(range(len(calls)))
        for j, call in enumerate(calls):
            new = name if j == 0 else fresh_name(f"{name}_call{j + 1}", names)
            body = _renamed_copy(layer, f"_call{j + 1}", names, nesting) if j and _is_model(layer) else layer
            one = {**body, "config": {**body.get("config", {}), "name": new}, "inbound_nodes": [call]}
            if "name" in layer:  # tf_keras names a functional config's layer beside its config too
                one["name"] = new
            layers.append(one)
            renames[(name, nodes[j])] = new
            nesting.copies.update({new: name} if j else {})
    if not renames:
        return
    inner["layers"] = layers
    reads = [r for layer in layers for r in _reads(layer.get("inbound_nodes"))]
    for history in [*reads, *inner.get("output_layers", [])]:
        key = (history[0], int(history[1])) if len(history) > 1 else None
        if key in renames:
            history[0], history[1] = renames[key], 0


def _is_model(layer: dict) -> bool:
    return layer.get("class_name") in MODEL_CLASSES


def _renamed_copy(model: dict, suffix: str, names: set[str], nesting: Nesting) -> dict:
    """A copy of a nested model's config for another of its calls (a siamese network's shared encoder): every layer
    inside it, at any depth, takes a new name (``dense`` -> ``dense_call2``), which :attr:`Nesting.copies` maps back
    to the layer holding the weights. Reads are re-linked in the config of the model each layer sits in."""
    copied, taken = copy.deepcopy(model), set(names)  # claimed when the copy is inlined (_claim_names)
    stack = [copied]
    while stack:
        inner = stack.pop()
        for layer in (inner.get("config") or {}).get("layers") or []:
            if layer.get("class_name") == "InputLayer":
                continue
            old = layer_name(layer)
            new = fresh_name(f"{old}{suffix}", taken)
            if inner.get("class_name") != "Sequential":  # a Sequential chains its layers by order, not by name
                replace_reads(inner, old, lambda index, new=new: [new, 0, index])
            layer.setdefault("config", {})["name"] = new
            if "name" in layer:
                layer["name"] = new
            nesting.copies[new] = nesting.copies.get(old, old)
            stack += [layer] if _is_model(layer) else []
    return copied


def fresh_name(base: str, names: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... the first not in ``names`` (which it joins)."""
    name, k = base, 1
    while name in names:
        k += 1
        name = f"{base}_{k}"
    names.add(name)
    return name


def _flat_layers(config: dict, names: set[str], nesting: Nesting, where: tuple[str, ...], keras3: bool) -> list:
    """The functional ``config``'s layers with shared layers split per call and nested models replaced by their
    (flattened) layers."""
    _unshare(config, names, nesting)
    out: list[dict] = []
    for layer in list(config["config"]["layers"]):
        kind = layer.get("class_name")
        if kind in INFERENCE_IDENTITY:
            _bypass(config, layer)
            nesting.removed.append(f"{layer_name(layer)} ({kind})")
        elif kind in MODEL_CLASSES:
            out += _inline(config, layer, names, nesting, (where, keras3))
        else:
            out.append(layer)
    return out


def _inline(config: dict, model: dict, names: set[str], nesting: Nesting, at: tuple) -> list[dict]:
    """A nested model's layers, its inputs reading what it was called on, its readers reading its outputs."""
    (where, keras3), outer, kind = at, layer_name(model), str(model.get("class_name"))
    args = _call_args(model)
    body = as_functional(model, keras3) if kind == "Sequential" else model
    inner = body.get("config") or {}
    inputs, outputs = model_ends(inner.get("input_layers")), model_ends(inner.get("output_layers"))
    if len(inputs) != len(args):
        raise UnsupportedLayerError(outer, kind, f"a nested model of {len(inputs)} input(s) called on {len(args)}")
    layers = [layer for layer in inner.get("layers") or [] if layer.get("class_name") != "InputLayer"]
    _claim_names(outer, layers, names)
    inner_config = {"config": {"layers": layers, "output_layers": outputs}}
    for end, arg in zip(inputs, args):
        replace_reads(inner_config, end[0], lambda index, arg=arg: arg)
    for layer in layers:
        layer.setdefault("config", {})["trainable"] = True
        nesting.path[layer_name(layer)] = (*where, outer)
    flat = _flat_layers(inner_config, names, nesting, (*where, outer), keras3)
    ends = inner_config["config"]["output_layers"]  # augmentation at its end removed: its input
    replace_reads(config, outer, lambda index: ends[index] if index < len(ends) else None)
    return flat


def _call(layer: dict) -> tuple[list[list], dict]:
    """The reads ([layer, node, tensor, ...] lists, changed in place to re-link) of a layer's one call, and its
    options, from a Keras 3 (``{"args", "kwargs"}``) or tf_keras (``[[name, node, tensor, kwargs], ...]``) node."""
    name, kind = layer_name(layer), str(layer.get("class_name"))
    calls = layer.get("inbound_nodes") or []
    if len(calls) != 1:
        what = "a nested model called" if kind in MODEL_CLASSES else "called"
        raise UnsupportedLayerError(name, kind, f"{what} {len(calls)} times; deploykit reads one call")
    call = calls[0]
    if isinstance(call, dict):
        args, kwargs = list(call.get("args") or []), dict(call.get("kwargs") or {})
        tensors = args[0] if len(args) == 1 and isinstance(args[0], list) else args
        if not tensors or not all(is_tensor(t) for t in tensors):
            raise UnsupportedLayerError(name, kind, f"called with {args}; deploykit reads a call on tensors")
        return [t["config"]["keras_history"] for t in tensors], kwargs
    kwargs = {}
    for entry in call:
        kwargs.update(entry[3] if len(entry) > 3 and isinstance(entry[3], dict) else {})
    return list(call), kwargs


def _call_args(model: dict) -> list[list]:
    """The reads of a nested model's one call (with no option other than inference's)."""
    reads, kwargs = _call(model)
    extra = {k: v for k, v in kwargs.items() if v not in _CALL_OPTIONS.get(k, (None,))}
    if extra:
        name, kind = layer_name(model), str(model.get("class_name"))
        raise UnsupportedLayerError(name, kind, f"a nested model called with {extra}; deploykit reads inference calls")
    return reads


def _claim_names(outer: str, layers: list[dict], names: set[str]) -> None:
    """Inlined layers keep their names (their weights are found by them): one also used outside is refused."""
    for layer in layers:
        name = layer_name(layer)
        if name in names:
            kind = str(layer.get("class_name"))
            raise UnsupportedLayerError(
                name, kind, f"inside the nested model {outer!r}, its name is also used outside it"
            )
        names.add(name)


def _bypass(config: dict, layer: dict) -> None:
    """Readers of ``layer`` read what it was called on (it returns its input at inference)."""
    reads, _kwargs = _call(layer)
    if len(reads) != 1:
        name, kind = layer_name(layer), str(layer.get("class_name"))
        raise UnsupportedLayerError(name, kind, "an augmentation layer not called on one tensor")
    replace_reads(config, layer_name(layer), lambda index: reads[0] if index == 0 else None)


def as_functional(config: dict, keras3: bool, *, need_shape: bool = False) -> dict:
    """A Sequential model config as the functional config of the same chain (a copy of its layers, re-linked).

    Without an InputLayer its input is the build shape's: a nested one's input is replaced by what it is
    called on, so only a top-level Sequential (``need_shape``) needs one."""
    inner = dict(config.get("config") or {})
    layers = [dict(layer) for layer in inner.get("layers") or []]
    if layers and layers[0].get("class_name") == "InputLayer":
        first, layers = layers[0], layers[1:]
    else:
        first = _input_layer(f"{inner.get('name', 'sequential')}_input", _build_shape(config, need_shape), keras3)
    first = first if keras3 else {**first, "name": layer_name(first), "inbound_nodes": []}
    previous, chained = layer_name(first), [first]
    for layer in layers:
        if keras3:
            chained.append({**layer, "inbound_nodes": [{"args": [tensor_ref(previous)], "kwargs": {}}]})
        else:  # tf_keras names each layer of a functional config beside its config
            chained.append({**layer, "name": layer_name(layer), "inbound_nodes": [[[previous, 0, 0, {}]]]})
        previous = layer_name(layer)
    inner.update(layers=chained, input_layers=[[layer_name(first), 0, 0]], output_layers=[[previous, 0, 0]])
    inner.pop("build_input_shape", None)
    return {**config, "class_name": "Functional" if keras3 else "Model", "config": inner}


def _build_shape(config: dict, need_shape: bool) -> list | None:
    shape = (config.get("config") or {}).get("build_input_shape") or (config.get("build_config") or {}).get(
        "input_shape"
    )
    if not shape and need_shape:
        raise UnsupportedLayerError(layer_name(config), "Sequential", "a Sequential model without an input shape")
    return list(shape) if shape else None


def _input_layer(name: str, batch_shape: list | None, keras3: bool) -> dict:
    if not keras3:
        config = {"batch_input_shape": batch_shape, "dtype": "float32", "sparse": False, "name": name}
        return {"class_name": "InputLayer", "config": config, "name": name, "inbound_nodes": []}
    return {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "registered_name": None,
        "config": {"batch_shape": batch_shape, "dtype": "float32", "sparse": False, "name": name},
    }


def replace_reads(config: dict, old: str, history_of) -> None:
    """Every read of layer ``old``'s output ``index`` (in inbound nodes and the model's ends) now reads the
    tensor ``history_of(index)`` names ([layer, node, tensor]); one it cannot name is refused."""
    inner = config["config"]
    _bare_ends(inner)
    reads = [r for layer in inner["layers"] for r in _reads(layer.get("inbound_nodes"))]
    for history in [*reads, *inner.get("output_layers", []), *inner.get("input_layers", [])]:
        if history and history[0] == old:
            got = history_of(int(history[2]) if len(history) > 2 else 0)
            if got is None:
                raise UnsupportedLayerError(old, "Model", f"a read of its output {history[:3]} it does not have")
            history[:3] = list(got[:3])


def _bare_ends(inner: dict) -> None:
    """A model's input_layers / output_layers as lists of ends, in place (see :func:`model_ends`)."""
    for key in ("output_layers", "input_layers"):
        if inner.get(key):
            inner[key] = model_ends(inner[key])


def _reads(value):
    """The [layer, node, tensor, ...] lists an inbound_nodes value reads from, in either Keras's format."""
    if is_tensor(value):
        yield value["config"]["keras_history"]
    elif isinstance(value, dict):
        for v in value.values():
            yield from _reads(v)
    elif isinstance(value, list):
        if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
            yield value  # tf_keras: [name, node_index, tensor_index, kwargs]
            for v in value[3:]:  # a TensorFlow call's other tensors are among its kwargs (x * y: {"y": [...]})
                yield from _reads(v)
        else:
            for v in value:
                yield from _reads(v)


def model_ends(value) -> list[list]:
    """A model's input_layers / output_layers as a list of [layer, node, tensor]. One end may be written bare; a
    Keras 3 model built with a dict of outputs (or inputs) saves a dict of ends, listed here in its order, the order
    of the dict the model returns."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [value]
    return [list(v) for v in value or []]


def layer_name(layer: dict) -> str:
    """A serialized layer's name (Keras 3 keeps it in its config)."""
    return str((layer.get("config") or {}).get("name") or layer.get("name"))


def tensor_ref(name: str) -> dict:
    """A Keras 3 config's reference to layer ``name``'s (first) output."""
    return {"class_name": _TENSOR, "config": {"keras_history": [name, 0, 0]}}


def is_tensor(value) -> bool:
    return isinstance(value, dict) and value.get("class_name") == _TENSOR
