"""Recurrent layers unrolled for the TFLite converter.

A tf_keras LSTM / GRU / SimpleRNN runs as a ``tf.while_loop`` over a
TensorList, which the TFLite converter refuses with a dynamic batch axis
("tf.TensorListReserve requires element_shape to be static"); its way out
(Flex ops, or lowering the lists) needs the TensorFlow runtime LiteRT does not
carry, and a static batch of 1 gives a fused LSTM op that cannot be resized
to other batches. ``unroll=True`` computes the same function with one copy of
the cell per timestep: builtin ops only, any batch. It needs a fixed number of
timesteps, which every model deploykit exports has (its input shape is fixed).
"""

from __future__ import annotations

from deploykit.core.layers import RECURRENT_LAYERS
from deploykit.errors import UnsupportedLayerError
from deploykit.keras3.rnn import WRAPPERS


def unrolled(model):
    """``model`` with its recurrent layers unrolled (same weights), or ``model`` itself when it has none."""
    from deploykit.core.graph import graph_from_model, to_keras

    if not any(_recurrent(layer.__class__.__name__, layer.get_config()) for layer in model.layers):
        return model
    try:
        graph = graph_from_model(model, unsafe=True)
    except UnsupportedLayerError:  # a model the graph reader cannot take converts as it is
        return model
    for node in graph.nodes:
        node.spec.config = _unrolled_config(node.spec.class_name, node.spec.config)
    return to_keras(graph)


def _recurrent(kind: str, config: dict) -> bool:
    return kind in RECURRENT_LAYERS or any(
        isinstance(config.get(key), dict) and config[key].get("class_name") in RECURRENT_LAYERS
        for key in WRAPPERS.get(kind, ())
    )


def _unrolled_config(kind: str, config: dict) -> dict:
    if kind in RECURRENT_LAYERS:
        return {**config, "unroll": True}
    out = dict(config)
    for key in WRAPPERS.get(kind, ()):
        inner = out.get(key)
        if isinstance(inner, dict) and inner.get("class_name") in RECURRENT_LAYERS:
            out[key] = {**inner, "config": {**inner.get("config", {}), "unroll": True}}
    return out
