"""Custom Keras 3 layers, read as what they compute.

keras.io's Transformer blocks, token-and-position embeddings and patch encoders are
custom classes: a ``Layer`` subclass whose ``call`` uses built-in layers and ``ops``.
tf_keras (so TF-MOT, and tf2onnx's Keras path) cannot run Keras 3 code, and a file
alone does not hold the code. When the user gives it as Keras itself takes it (the
class registered with ``keras.saving.register_keras_serializable`` or in a
``custom_object_scope``; a Python file passed with ``--custom-objects``; a live
model object's own classes), :func:`inlined` loads the model with Keras 3 and calls
each custom layer's ``call`` on symbolic tensors (``keras.models.clone_model``'s
``call_function``): what the layer computes is recorded as the built-in layers and
operations it is made of, its own variables used in ``ops`` become constants, and
the model is read from that config like any other file. A subclassed model is
traced the same way, and so is a built-in layer computing with a registered
function of the user's (``Dense(activation=my_activation)``), and, with ``unsafe`` (Keras 3 then
deserializes its code), a ``Lambda`` layer's function. The import then
checks the tf_keras rebuild against the user's own model, custom code included.

So every step works on built-in layers (the Dense layers inside a Transformer
block prune and quantize), and no artifact holds the user's code. A layer whose
``call`` cannot be traced symbolically (Python branching on values, a random
draw) is refused with its name and Keras' reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import sys
import warnings
from pathlib import Path

from deploykit.core.modelfile import ModelFile, function_names, is_custom
from deploykit.core.nested import layer_name, model_ends
from deploykit.errors import DeployKitError, ModelLoadError, UnsupportedLayerError, UsageError, one_line

#: How to give a class's (or a function's) code, said when it was not given.
_HOW = (
    "pass the Python file defining it with --custom-objects FILE.py (API: register it with "
    "keras.saving.register_keras_serializable, or call deploykit inside keras.saving.custom_object_scope)"
)
#: Custom layers the loader's line names (a ViT of 12 blocks is 12 more).
_SHOWN = 8
#: Rounds of inlining: a custom layer's call may call another custom layer, which the next round inlines.
MAX_DEPTH = 8


@dataclasses.dataclass(frozen=True)
class Inlined:
    """A model whose custom layers are inlined: its config as a file's (``model_file``), the Keras 3 model that
    config describes (``source``: the user's layer objects, so their weights), and the user's own model
    (``reference``), which the rebuild is checked against."""

    model_file: ModelFile
    source: object
    reference: object
    layers: tuple[str, ...]  # "name (Class)" of each custom layer inlined

    @property
    def line(self) -> str:
        """What the loader says (and the optimize report's notes keep)."""
        more = len(self.layers) - _SHOWN
        shown = ", ".join(self.layers[:_SHOWN]) + (f" and {more} more" if more > 0 else "")
        return f"custom layers read as what their call computes (built-in layers and operations): {shown}"


def _custom_layers(model_file: ModelFile) -> list[dict]:
    """The serialized layers of the file that are custom classes (Keras 3 files; nested models' layers too)."""
    return [layer for layer in _all_layers(model_file.config) if _is_custom_config(layer)]


def inlined(model_file: ModelFile, *, unsafe: bool, builtins: dict | None = None) -> Inlined | None:
    """The model with its custom layers inlined, or None when it has none (nothing is loaded then).

    ``builtins`` maps custom class names read as built-in layers (the chapter's MCDropout:
    :mod:`deploykit.core.custom_dropout`) to those layers. Any other custom class must be one Keras 3 resolves in
    this process; one it does not is refused by name, saying how to give its code.
    """
    customs = [layer for layer in _custom_layers(model_file) if _class_name(layer) not in (builtins or {})]
    if _is_custom_config(model_file.config):  # a subclassed model: its call is traced as a custom layer's is
        customs.insert(0, model_file.config)
    # a built-in layer computing with a custom function (Dense(activation=my_activation)) is traced as well
    with_functions = {
        layer_name(layer): (_class_name(layer), function_names(layer.get("config")))
        for layer in _all_layers(model_file.config)
        if not _is_custom_config(layer) and function_names(layer.get("config"))
    }
    # a Lambda layer's function (loaded only with unsafe: Keras 3 deserializes its bytecode) is traced as well
    lambdas = {layer_name(layer) for layer in _all_layers(model_file.config) if _class_name(layer) == "Lambda"}
    with_functions.update({name: ("Lambda", []) for name in lambdas} if unsafe else {})
    if not customs and not with_functions:
        return None
    from deploykit.core.custom_dropout import read_in_place
    from deploykit.keras3.convert import keras3_context

    with keras3_context() as keras3:
        resolved = _resolved(keras3, model_file, customs, with_functions)  # a scope's too: the loader's replaces it
        objects = {**resolved, **{name: getattr(keras3.layers, base) for name, base in (builtins or {}).items()}}
        try:
            with read_in_place(keras3, objects), warnings.catch_warnings():
                # Keras' note that a custom class has no build(): the import checks the outputs instead
                warnings.filterwarnings("ignore", message=r".*`build\(\)` was called on layer", category=UserWarning)
                reference = keras3.saving.load_model(str(model_file.path), compile=False, safe_mode=not unsafe)
        except Exception as exc:
            raise ModelLoadError(f"model {model_file.path}: Keras 3 cannot load it ({one_line(exc)[:300]})") from None
        source, names = _inline(keras3, reference, model_file, set(with_functions))
        config = json.loads(json.dumps(keras3.saving.serialize_keras_object(source)))  # as a file holds it
        if isinstance(source.input, dict):  # a subclassed model built on a dict: checked on the same arrays
            reference = _ByName(reference, [end[0] for end in model_ends(config["config"].get("input_layers"))])
    return Inlined(dataclasses.replace(model_file, config=config), source, reference, tuple(names))


class _ByName:
    """A model taking a dict of inputs, called with a list of arrays in the order its traced twin's config lists the
    inputs (the order the import's check feeds them in)."""

    def __init__(self, model, names: list[str]):
        self.model, self.names = model, names

    def __call__(self, x, training=False):
        return self.model(dict(zip(self.names, x)), training=training)


def import_custom_objects(paths) -> None:
    """Import each Python file (its code runs) and register its Keras 3 layer classes and functions (its functions in
    tf_keras too, for a tf.keras file naming them).

    A class or function the file registers itself (``register_keras_serializable``) keeps its registered name; any
    other ``keras.layers.Layer`` subclass or function it defines is registered under its own name, as
    ``custom_objects=`` gives it to Keras (an activation saved unregistered is looked up by its name).
    """
    import inspect

    from deploykit.backend import keras as tf_keras
    from deploykit.keras3.convert import keras3_context

    with keras3_context() as keras3:
        for path in paths:
            module = _import_file(Path(path))
            registry = keras3.saving.get_custom_objects()
            for value in vars(module).values():
                layer = isinstance(value, type) and issubclass(value, keras3.layers.Layer)
                if not (layer or inspect.isfunction(value)):
                    continue
                if value.__module__ != module.__name__:  # imported into the file, not defined there
                    continue
                if keras3.saving.get_registered_object(keras3.saving.get_registered_name(value)) is None:
                    registry[value.__name__] = value
                if inspect.isfunction(value):  # a tf.keras file names its functions too (the book's my_softplus)
                    tf_keras.saving.get_custom_objects()[value.__name__] = value


@contextlib.contextmanager
def classes_of(model):
    """Let Keras 3 find the custom classes a live model is made of (itself, its layers, theirs), while a copy of it
    saved to a file loads: the code a caller holding the object has given, as ``custom_objects=`` gives it."""
    from deploykit.keras3.convert import keras3_context

    with keras3_context() as keras3:
        found = {
            keras3.saving.get_registered_name(type(layer)): type(layer)
            for layer in model._flatten_layers(include_self=True, recursive=True)
            if _is_custom_object(layer)
        }
        # the global registry, not a custom_object_scope: a scope entered inside (the loader's) replaces this one
        registry = keras3.saving.get_custom_objects()
        added = {name: cls for name, cls in found.items() if name not in registry}
        registry.update(added)
        try:
            yield
        finally:
            for name in added:
                registry.pop(name, None)


def _import_file(path: Path):
    """Import one Python file as a module of its own name; one line when it is missing or fails."""
    if not path.exists():
        raise UsageError(f"--custom-objects {path}: no such file")
    if path.suffix != ".py" or not path.is_file():
        raise UsageError(f"--custom-objects {path}: not a Python file (give the .py file defining the classes)")
    name = f"deploykit_custom_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a script's sys.exit() too: one line, not a silent exit
        del sys.modules[name]
        raise UsageError(f"--custom-objects {path}: importing it failed ({one_line(exc)})") from None
    return module


def _resolved(keras3, model_file: ModelFile, customs: list[dict], with_functions: dict) -> dict:
    """The class of each custom layer and each custom function, by the name the file gives it; one Keras 3 cannot
    find in this process (its code was not given) is refused by name."""
    found = {}
    for layer, (kind, functions) in with_functions.items():
        for function in functions:
            found[function] = keras3.saving.get_registered_object(function)
            if found[function] is None:
                raise UnsupportedLayerError(
                    layer,
                    kind,
                    f"it computes with the custom function {function!r}, and its code was not given: {_HOW}",
                )
    for layer in customs:
        registered = str(layer.get("registered_name") or layer.get("class_name"))
        found[registered] = keras3.saving.get_registered_object(registered)
        if found[registered] is None:
            name = str((layer.get("config") or {}).get("name", registered))
            what = "a subclassed model" if layer is model_file.config else "a custom layer class"
            raise UnsupportedLayerError(
                name,
                registered,
                f"{what}, and its code was not given: {_HOW}",
            )
    return found


def _inline(keras3, model, model_file: ModelFile, with_functions: set[str]):
    """A functional Keras 3 model computing what ``model`` does with no custom layer, and the layers inlined
    (``with_functions``: the built-in layers computing with a custom function, inlined too)."""
    names: list[str] = []
    unique = _UniqueNames(keras3, model)

    def traced(layer) -> bool:
        return _is_custom_object(layer) or (layer.name in with_functions and not isinstance(layer, keras3.Model))

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras3.Model) and not _is_custom_object(layer):
            if any(traced(inner) for inner in _layers_of(layer)):  # a nested model holding custom layers
                outputs = _nested(keras3, layer, call)(*args, **kwargs)
                unique.claim(outputs, (args, kwargs))
                return outputs
        if not traced(layer):
            return layer(*args, **kwargs)
        own = "" if _is_custom_object(layer) or type(layer).__name__ == "Lambda" else " with a custom function"
        names.append(f"{layer.name} ({type(layer).__name__}{own})")
        try:
            outputs = layer.call(*args, **kwargs)
        except Exception as exc:
            raise UnsupportedLayerError(
                layer.name,
                type(layer).__name__,
                f"a custom layer whose call cannot be traced on symbolic tensors ({one_line(exc)[:200]})",
            ) from None
        unique.claim(outputs, (args, kwargs))
        return outputs

    current = _subclassed(keras3, model, model_file, call) if _is_custom_config(model_file.config) else None
    current = current or _functional(keras3, model, model_file, call)
    for _ in range(MAX_DEPTH):
        if not any(traced(layer) for layer in _layers_of(current)):
            return current, names
        try:
            current = keras3.models.clone_model(current, clone_function=lambda layer: layer, call_function=call)
        except DeployKitError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"model {model_file.path}: Keras 3 cannot rebuild it with its custom layers inlined ({one_line(exc)})"
            ) from None
    raise ModelLoadError(f"model {model_file.path}: custom layers nested more than {MAX_DEPTH} deep; refused")


def _nested(keras3, model, call):
    """A nested built-in model holding custom layers, as a callable computing it with them inlined: a Sequential
    one is its layers called in turn (the outer graph holds them), a functional one its clone."""
    if isinstance(model, keras3.Sequential):

        def in_turn(x, **kwargs):
            for layer in model.layers:
                x = call(layer, x)
            return x

        return in_turn
    return keras3.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


def _functional(keras3, model, model_file: ModelFile, call):
    """``model`` as a functional model: a Sequential one is called layer by layer (``call``) on the input its
    config declares (it may not be built: Keras builds it by calling its layers, custom ones included)."""
    if not isinstance(model, keras3.Sequential):
        return model
    first = (model_file.layer_configs() or [{}])[0]
    if first.get("class_name") != "InputLayer":
        raise ModelLoadError(f"model {model_file.path}: a Sequential model with no declared input; refused")
    spec = first.get("config") or {}
    x = keras3.Input(batch_shape=tuple(spec["batch_shape"]), dtype=spec.get("dtype"), name=spec.get("name"))
    y = x
    for layer in model.layers:
        y = call(layer, y)
    return keras3.Model(x, y, name=model.name)


def _subclassed(keras3, model, model_file: ModelFile, call):
    """A subclassed model (a ``keras.Model`` subclass, the Keras guide's ``MLPBlock``) as a functional model: its
    ``call`` traced on inputs of the shapes it was built with (the file's ``build_config``)."""
    shapes = (model_file.config.get("build_config") or {}).get("input_shape")
    if isinstance(shapes, dict) and shapes:  # built on a dict of inputs: traced on one, named as its keys
        inputs = {key: keras3.Input(batch_shape=tuple(shape), name=key) for key, shape in shapes.items()}
        return keras3.Model(inputs, call(model, inputs), name=model.name)
    if not isinstance(shapes, (list, tuple)) or not shapes:
        raise UnsupportedLayerError(
            model.name,
            type(model).__name__,
            "a subclassed model saved before it was built: its file holds no input shape (call it on data, or "
            "build it, before saving)",
        )
    several = all(isinstance(s, (list, tuple)) for s in shapes)
    if several:
        inputs = [keras3.Input(batch_shape=tuple(s)) for s in shapes]
    else:
        inputs = keras3.Input(batch_shape=tuple(shapes))
    return keras3.Model(inputs, call(model, inputs), name=model.name)


class _UniqueNames:
    """One name per layer and operation of the traced model.

    What a custom layer's ``call`` adds (its sub-layers, made when the file loaded; its operations, made while it
    is traced) is named by Keras' counters in this process, which know nothing of the names the file gave the
    model's own layers (an ``Add`` layer the user named ``add`` beside the ``x + y`` of a custom layer), and two
    calls of one block may hold sub-layers the block names alike. Such a newcomer takes the next free name.
    """

    def __init__(self, keras3, model):
        self.keras3 = keras3
        self.taken = {op.name for op in _operations_of(model) if not _is_custom_object(op)}
        self.seen: set[int] = set()

    def claim(self, outputs, inputs) -> None:
        """Name uniquely every operation between a call's ``inputs`` and its ``outputs`` not met before."""
        tree = self.keras3.tree
        stop = {id(t) for t in tree.flatten(inputs)}
        stack = [t for t in tree.flatten(outputs) if id(t) not in stop]
        walked: set[tuple[int, int]] = set()  # (operation, call) pairs this walk passed
        while stack:
            history = getattr(stack.pop(), "_keras_history", None)
            if history is None or (id(history.operation), history.node_index) in walked:
                continue
            walked.add((id(history.operation), history.node_index))
            if id(history.operation) not in self.seen:
                self._name(history.operation)
            node = history.operation._inbound_nodes[history.node_index]
            stack += [t for t in node.input_tensors if id(t) not in stop]

    def _name(self, op) -> None:
        self.seen.add(id(op))
        if op.name in self.taken:
            base, k = op.name, 1
            while f"{base}_{k}" in self.taken:
                k += 1
            op.name = f"{base}_{k}"
        self.taken.add(op.name)
        for inner in _operations_of(op) if hasattr(op, "layers") else ():  # a nested model's own layers
            if id(inner) not in self.seen:
                self._name(inner)


def _operations_of(model):
    """Every layer and operation of a model, inside its nested models too (not the model itself)."""
    for op in getattr(model, "operations", None) or getattr(model, "layers", None) or []:
        yield op
        if hasattr(op, "layers"):
            yield from _operations_of(op)


def _layers_of(model):
    """Every layer of a model, inside its nested models too."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):
            yield from _layers_of(layer)


def _is_custom_object(layer) -> bool:
    module = type(layer).__module__
    return not (module == "keras" or module.startswith("keras."))


def _is_custom_config(layer: dict) -> bool:
    """A serialized layer of a class that is not Keras' own: a registered one, or one saved unregistered from a
    script or notebook (Keras 3 writes no module for it)."""
    if "class_name" not in layer or is_custom(layer):
        return "class_name" in layer
    module = layer.get("module", "keras")  # a config naming no module (an older writer's) is read as Keras' own
    return not (module == "keras" or str(module).startswith("keras."))


def _class_name(layer: dict) -> str:
    return str(layer.get("class_name"))


def _all_layers(config: dict):
    """Every serialized layer of a config, nested models' layers included, walked without recursion and no deeper
    than the loader reads nested models (:data:`deploykit.core.nested.MAX_DEPTH`: it refuses a deeper nesting)."""
    from deploykit.core.nested import MAX_DEPTH as NESTING

    stack = [(config, 0)]
    while stack:
        outer, depth = stack.pop()
        inner = outer.get("config") if isinstance(outer, dict) else None
        for layer in (inner or {}).get("layers") or [] if isinstance(inner, dict) else []:
            if not isinstance(layer, dict):
                continue
            yield layer
            if depth < NESTING and isinstance((layer.get("config") or {}).get("layers"), list):
                stack.append((layer, depth + 1))
