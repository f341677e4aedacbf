"""Dense networks as a chain of layer specs, and back.

deploykit's steps (fold, compact, the Keras 3 import, the MC Dropout builder)
read a model as a flat list of :class:`LayerSpec` (class name, config,
weights), change the list, and rebuild a fresh tf_keras ``Sequential``. The
input model is never mutated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from deploykit.errors import UnsupportedLayerError
from deploykit.layers import LayerSupport, support_for


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


@dataclass
class Chain:
    """A linear stack of layers after an input of ``input_shape`` (no batch axis)."""

    input_shape: tuple[int, ...]
    layers: list[LayerSpec]
    name: str = "deploykit_model"


def to_chain(model, *, unsafe: bool = False) -> Chain:
    """Read a tf_keras model (Sequential, or a functional model that is a plain chain)."""
    layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]
    for layer in layers:
        support_for(layer, unsafe=unsafe)
        inbound = getattr(layer, "_inbound_nodes", [])
        if len(inbound) > 1:
            raise UnsupportedLayerError(layer.name, type(layer).__name__, "layer is shared or reused; only plain chains are supported")
    _check_is_chain(model)
    if any(d is None for d in model.input_shape[1:]):
        raise UnsupportedLayerError(model.name, type(model).__name__, f"input shape {model.input_shape} has undefined dimensions besides the batch")
    input_shape = tuple(int(d) for d in model.input_shape[1:])
    specs = [LayerSpec(type(l).__name__, copy.deepcopy(l.get_config()), [np.array(w) for w in l.get_weights()]) for l in layers]
    return Chain(input_shape, specs, name=model.name)


def from_chain(chain: Chain):
    """Build a fresh tf_keras Sequential from a chain, with its weights set."""
    from deploykit.backend import keras

    model = keras.Sequential(name=chain.name)
    model.add(keras.Input(shape=chain.input_shape))
    for spec in chain.layers:
        cls = _layer_class(keras, spec.class_name)
        config = dict(spec.config)
        config.pop("batch_input_shape", None)
        config.pop("input_shape", None)
        layer = cls.from_config(config)
        model.add(layer)
        if spec.weights:
            layer.set_weights(spec.weights)
    return model


def _layer_class(keras, class_name: str):
    cls = getattr(keras.layers, class_name, None)
    if cls is None:
        raise UnsupportedLayerError(class_name, class_name, "no tf_keras layer of that name")
    return cls


def _check_is_chain(model) -> None:
    if type(model).__name__ == "Sequential":
        return
    # A functional model: each layer must feed exactly the next one.
    inputs = getattr(model, "inputs", None) or []
    outputs = getattr(model, "outputs", None) or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedLayerError(model.name, type(model).__name__, "only single-input, single-output chains are supported")
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            parents = node.inbound_layers
            if isinstance(parents, (list, tuple)) and len(parents) > 1:
                raise UnsupportedLayerError(layer.name, type(layer).__name__, "layer has several inputs; only plain chains are supported")
