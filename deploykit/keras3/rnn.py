"""Recurrent layers between the two Keras: the options each lacks, and wrappers holding a layer config.

tf_keras' LSTM / GRU carry ``implementation`` (1 or 2: how the gates' matrix
products are batched, the same function either way) and ``time_major`` (the
input's axis order); Keras 3's carry ``seed`` (only draws the training-time
dropout masks) and ``zero_output_for_mask``. Each is dropped when crossing
over if it cannot change what the layer computes at inference, and refused
with its name otherwise. ``Bidirectional`` holds its forward (and backward)
layer's config: those are translated with the same rules, by the caller's
per-layer translation (``deploykit.keras3.convert``), so a nested layer is checked
as strictly as a top-level one; so does ``TimeDistributed`` (any layer, applied to each step).
"""

from __future__ import annotations

from collections.abc import Callable

from deploykit.core.layers import RECURRENT_LAYERS
from deploykit.errors import UnsupportedLayerError

#: Layers whose config holds the configs of the layers they wrap.
WRAPPERS = {"Bidirectional": ("layer", "backward_layer"), "TimeDistributed": ("layer",)}
#: Wrappers that may hold any layer (keras.io's CNN-RNN video classifier: ``TimeDistributed(Conv2D)``); the
#: others wrap a recurrent layer.
WRAPS_ANY = frozenset({"TimeDistributed"})

_ANY = object()  # any value computes the same at inference
#: tf_keras-only options: the value that keeps Keras 3's behaviour.
_TF_KERAS_ONLY = {"implementation": _ANY, "time_major": False}
#: Keras 3-only options, likewise.
_KERAS3_ONLY = {"seed": _ANY, "zero_output_for_mask": False}


def rnn_options(name: str, kind: str, config: dict, *, to_keras3: bool) -> dict:
    """``config`` without the options the other Keras lacks (dropped when they change nothing, else refused)."""
    if kind not in RECURRENT_LAYERS:
        return config
    lacking = _TF_KERAS_ONLY if to_keras3 else _KERAS3_ONLY
    out = dict(config)
    for key, neutral in lacking.items():
        if key not in out:
            continue
        value = out.pop(key)
        if neutral is not _ANY and value != neutral:
            raise UnsupportedLayerError(name, kind, f"option {key}={value!r} has no equivalent in the other Keras")
    return out


def wrapped_layers(
    name: str, kind: str, config: dict, translate: Callable[[str, str, dict], dict], *, to_keras3: bool
) -> dict:
    """A wrapper's config with each wrapped layer's config passed through ``translate(name, kind, config)``.

    Keras 3 finds a nested layer's class by its ``module``; tf_keras by its name alone.
    """
    keys = WRAPPERS.get(kind)
    if not keys:
        return config
    out = dict(config)
    for key in keys:
        inner = out.get(key)
        if inner is None:
            continue
        if not isinstance(inner, dict) or "class_name" not in inner:
            raise UnsupportedLayerError(name, kind, f"its {key} is not a layer config")
        inner_kind = str(inner["class_name"])
        if inner_kind not in RECURRENT_LAYERS and kind not in WRAPS_ANY:
            raise UnsupportedLayerError(
                name, kind, f"wraps a {inner_kind}; deploykit reads wrapped LSTM, GRU and SimpleRNN"
            )
        inner_config = dict(inner.get("config") or {})
        if inner_config.get("zero_output_for_mask") == inner_config.get("return_sequences", False):
            del inner_config["zero_output_for_mask"]  # both Keras's Bidirectional set it so on the layers it wraps
        out[key] = {
            "class_name": inner_kind,
            "config": translate(str(inner_config.get("name", inner_kind)), inner_kind, inner_config),
        }
        if to_keras3:
            out[key] |= {"module": "keras.layers", "registered_name": None}
    return out


def ordered_weights(kind: str) -> bool:
    """True when a layer's weights are matched in order: a wrapper's two layers name theirs alike, as do
    attention's four projections (query, key, value, output: each a kernel and a bias)."""
    return kind in WRAPPERS or kind == "MultiHeadAttention"
