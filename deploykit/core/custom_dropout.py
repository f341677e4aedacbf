"""The MC Dropout layers users write (``class MCDropout(keras.layers.Dropout)``, or
``Dropout(0.5)(x, training=True)``), recognized from the file alone.

Chapter 11's MC Dropout recipe subclasses Dropout (or AlphaDropout) and only
overrides ``call`` to force ``training=True``. The saved file then holds a
custom class whose config is exactly its base class's (same keys, nothing
added) under a name saying what it subclasses (``MCDropout``,
``Custom>MCAlphaDropout``). Such a layer is read as its base class, without
running the file's code and without ``unsafe``: the MC Dropout graph samples it,
deterministic exports run it in inference mode (identity), and the load logs
one warning line naming what was assumed (:func:`assumption` gives it back
for the reports). Keras' own Dropout called with ``training=True`` (the
functional way to keep it active at inference) is read the same way, its call
option dropped. Anything else custom is still refused by
:func:`deploykit.core.modelfile.check_model_config`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import weakref

from deploykit.core.modelfile import ModelFile, is_custom
from deploykit.core.nested import MODEL_CLASSES

log = logging.getLogger(__name__)

#: The config keys each base class saves (either Keras: tf_keras' AlphaDropout lacks ``noise_shape``).
_BASE_KEYS = {
    "Dropout": ({"name", "trainable", "dtype", "rate", "seed", "noise_shape"},),
    "AlphaDropout": (
        {"name", "trainable", "dtype", "rate", "seed", "noise_shape"},
        {"name", "trainable", "dtype", "rate", "seed"},
    ),
}
_KERAS_DROPOUTS = frozenset({"Dropout", "AlphaDropout", "GaussianDropout"})
#: Keys tf_keras' base Layer may add to any layer's config (the first layer of a Sequential built without Input).
_LAYER_KEYS = {"batch_input_shape"}

_ASSUMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class Recognized:
    """One custom layer read as a Keras dropout."""

    layer: str  # the layer's name
    custom: str  # the class name the file gives (registered name included)
    base: str  # "Dropout" or "AlphaDropout"
    forced: bool = False  # Keras' own dropout called with training=True (the functional MC Dropout idiom)


def dropout_base(layer: dict) -> str | None:
    """``"Dropout"`` / ``"AlphaDropout"`` when ``layer`` (a serialized layer) is a custom subclass of it, else None."""
    kind = str(layer.get("class_name") or "")
    if kind in _KERAS_DROPOUTS and not is_custom(layer):  # Keras' own (an .h5 config names no module)
        return None
    names = {kind, str(layer.get("registered_name") or "")}
    short = {n.rsplit(">", 1)[-1] for n in names if n}
    config = layer.get("config")
    if not isinstance(config, dict):
        return None
    for base in ("AlphaDropout", "Dropout"):  # AlphaDropout first: its name ends with Dropout too
        if not any(n.endswith(base) for n in short) or any(n.endswith("GaussianDropout") for n in short):
            continue
        keys = set(config) - _LAYER_KEYS
        return base if any(keys == expected for expected in _BASE_KEYS[base]) else None
    return None


def read_as_builtin(model_file: ModelFile) -> tuple[ModelFile, list[Recognized]]:
    """``model_file`` with each recognized custom dropout rewritten as its base class, and what was recognized
    (inside nested models too: deploykit.core.nested flattens them after this)."""
    found: list[Recognized] = []
    config = _rewritten(model_file.config, model_file.is_keras3, found)
    if not found:
        return model_file, []
    return dataclasses.replace(model_file, config=config), found


def unforced(model_config: dict) -> tuple[dict, list[Recognized]]:
    """A live tf_keras model's config (``{"class_name", "config"}``) with Keras' own dropout called with
    ``training=True`` as plain calls, and those layers; its custom classes are its own code, left as they are."""
    found: list[Recognized] = []
    config = _rewritten(model_config, False, found, forced_only=True)
    return (config, found) if found else (model_config, [])


def _rewritten(model_config: dict, keras3: bool, found: list[Recognized], forced_only: bool = False) -> dict:
    """A (nested) model config with its recognized custom dropouts as their base class, each added to ``found``
    (``forced_only``: only the calls with ``training=True`` rewritten)."""
    inner = model_config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        return model_config
    rewritten = []
    for layer in layers:
        if isinstance(layer, dict) and layer.get("class_name") in MODEL_CLASSES:
            rewritten.append(_rewritten(layer, keras3, found, forced_only))
            continue
        if isinstance(layer, dict) and _forced(layer):
            found.append(
                Recognized(str(layer["config"].get("name")), str(layer["class_name"]), str(layer["class_name"]), True)
            )
            rewritten.append(_unforced(layer))
            continue
        base = dropout_base(layer) if isinstance(layer, dict) and not forced_only else None
        if base is None:
            rewritten.append(layer)
            continue
        custom = str(layer.get("registered_name") or layer.get("class_name"))
        found.append(Recognized(str(layer["config"].get("name", custom)), custom, base))
        builtin = {**copy.deepcopy(layer), "class_name": base}
        if "module" in layer or keras3:
            builtin |= {"module": "keras.layers", "registered_name": None}
        else:
            builtin.pop("registered_name", None)
        rewritten.append(builtin)
    return {**model_config, "config": {**inner, "layers": rewritten}}


def _calls(layer: dict) -> list[dict]:
    """The option dicts of a layer's calls, in either Keras's format (Keras 3 ``kwargs``; tf_keras: each inbound
    tensor's fourth item)."""
    out = []
    for call in layer.get("inbound_nodes") or []:
        if isinstance(call, dict):
            out.append(call.setdefault("kwargs", {}))
        else:
            out += [entry[3] for entry in call if len(entry) > 3 and isinstance(entry[3], dict)]
    return out


def _forced(layer: dict) -> bool:
    """Keras' own Dropout / AlphaDropout called with ``training=True``: ``Dropout(0.5)(x, training=True)``, the
    functional way to keep dropout active at inference for MC Dropout."""
    if layer.get("class_name") not in ("Dropout", "AlphaDropout") or is_custom(layer):
        return False
    return any(options.get("training") is True for options in _calls(layer))


def _unforced(layer: dict) -> dict:
    """``layer`` (a copy) called without its ``training`` option."""
    layer = copy.deepcopy(layer)
    for options in _calls(layer):
        options.pop("training", None)
    return layer


def custom_objects(found: list[Recognized]) -> dict[str, str]:
    """The names a loader may meet for each recognized class (as saved, and without a package), to their base."""
    out = {}
    for r in (r for r in found if not r.forced):
        out[r.custom] = r.base
        out[r.custom.rsplit(">", 1)[-1]] = r.base
    return out


@contextlib.contextmanager
def read_in_place(keras_module, objects: dict):
    """Load with ``objects`` (name -> Keras class) in place of the custom classes, whatever this process registered.

    Both Keras let a class registered in the process (the user's own ``MCDropout``, with
    ``register_keras_serializable``) win over custom objects and scopes; it would draw random masks in
    the model deploykit reads. Those names are taken out of the registry while the file loads.
    """
    registry = keras_module.saving.get_custom_objects()  # the live global registry
    hidden = {name: registry.pop(name) for name in list(objects) if name in registry}
    try:
        with keras_module.saving.custom_object_scope(objects):
            yield
    finally:
        registry.update(hidden)


def describe(found: list[Recognized], live: bool = False) -> str:
    """The one line saying what was assumed (``live``: of a model object, whose code is its own)."""
    custom = [r for r in found if not r.forced]
    forced = [r for r in found if r.forced]
    parts = []
    if custom:
        layers = ", ".join(f"{r.layer!r} ({r.custom}) as {r.base}" for r in custom)
        parts.append(
            f"assumed {layers}: a custom class whose saved config is exactly its base class's (the MC Dropout "
            "layer of the book's chapter 11)"
        )
    if forced:
        layers = ", ".join(f"{r.layer!r} ({r.base})" for r in forced)
        parts.append(f"read {layers} called with training=True (dropout kept active: MC Dropout) as {forced[0].base}")
    return (
        "; ".join(parts)
        + "; MC Dropout samples it, deterministic exports run it in inference mode (identity)"
        + ("" if live else "; no code from the file was run")
    )


def remember(model, found: list[Recognized], live: bool = False) -> None:
    """Log what was assumed for ``model`` (one warning line) and keep it for :func:`assumption`."""
    if found:
        line = describe(found, live)
        log.warning(line)
        _ASSUMED[model] = line


def assumption(model) -> str | None:
    """What loading ``model`` assumed about its custom layers (None when nothing)."""
    try:
        return _ASSUMED.get(model)
    except TypeError:  # not weak-referenceable: nothing was recorded for it
        return None
