"""Keras 3 operation layers that move or reduce values, rewritten as built-in layers from their input shapes.

keras.io's functional models call ``keras.ops`` between layers: ``ops.concatenate([a, b], axis=1)``,
``ops.mean(x, axis=1)`` to pool a sequence, ``ops.expand_dims`` / ``ops.squeeze`` / ``ops.reshape`` /
``ops.transpose`` to line tensors up. tf_keras has a layer for each, given the per-sample shape, which Keras 3
writes beside every tensor reference of the saved config (``"shape": [null, 4, 6]``). :func:`lower_shape_op`
rewrites one such operation layer, without running anything from the file:

- ``concatenate(tensors, axis)``: ``Concatenate(axis)``;
- ``expand_dims(x, axis)``, ``squeeze(x, axis)``, ``reshape(x, (-1, ...))``: ``Reshape`` to the shape it gives;
- ``transpose(x, (0, ...))`` (the batch axis stays first): ``Permute``;
- ``ops.image.extract_patches(x, size)`` with the patches side by side (keras.io's ViT, MLP-Mixer, gMLP ``Patches``
  layer): ``Reshape`` to the patches' rows and columns, ``Permute``, ``Reshape`` (values moved, none computed);
- ``x[key]`` (``GetItem``: slices of step 1 and integer indices, on any axis but the batch's): each cut axis a
  ``Cropping1D`` (moved first and the others flattened around it by ``Permute`` / ``Reshape`` when it is not the
  first), then a ``Reshape`` dropping the indexed axes;
- ``mean`` / ``max`` / ``sum`` over every axis between the batch and the channels (a sequence's steps, an image's
  rows and columns): ``GlobalAveragePooling`` / ``GlobalMaxPooling`` 1D to 3D (``sum``: the average times the
  number of positions, a ``Rescaling``).

Anything else (a reduction over the channels, an unknown axis length, an option these layers lack) is refused by
name. The import's rebuild check then holds the rewritten model to the Keras 3 one as for any file.
"""

from __future__ import annotations

import math

from deploykit.core.nested import is_tensor, layer_name, tensor_ref
from deploykit.errors import UnsupportedLayerError

#: The operation layers this module rewrites (Keras 3 class names).
SHAPE_OPS = frozenset(
    {"Concatenate", "ExpandDims", "Squeeze", "Reshape", "Transpose", "Mean", "Max", "Sum", "ExtractPatches", "GetItem"}
)

_POOLING = {"Mean": "GlobalAveragePooling", "Sum": "GlobalAveragePooling", "Max": "GlobalMaxPooling"}


def lower_shape_op(name: str, kind: str, args: list, options: dict, builtin, fresh) -> list[dict]:
    """The built-in layers computing operation ``kind`` (the last keeps ``name``). ``builtin(kind, name, source,
    **config)`` makes a layer config, ``fresh(base)`` a new layer name (:mod:`deploykit.keras3.ops`)."""
    if kind == "Concatenate":
        tensors = args[0] if len(args) == 1 and isinstance(args[0], list) else []
        if len(tensors) < 2 or not all(is_tensor(t) for t in tensors) or set(options) - {"axis"}:
            raise UnsupportedLayerError(name, kind, "expected a list of tensors and an axis")
        _axes(name, kind, options.get("axis", 0), len(_shape(name, kind, tensors[0])))  # not the batch axis
        return [{**builtin("Concatenate", name, None, axis=int(options.get("axis", 0))), "inbound_nodes": [
            {"args": [tensors], "kwargs": {}}
        ]}]  # fmt: skip
    if kind == "GetItem" and len(args) == 2 and is_tensor(args[0]) and not options:
        return _item(name, kind, args[0], _shape(name, kind, args[0]), args[1], builtin, fresh)
    if len(args) != 1 or not is_tensor(args[0]):
        raise UnsupportedLayerError(name, kind, "expected one tensor argument")
    x, shape = args[0], _shape(name, kind, args[0])
    if kind in _POOLING:
        return _pooled(name, kind, x, shape, options, builtin, fresh)
    if kind == "ExtractPatches":
        return _patches(name, kind, x, shape, options, builtin, fresh)
    if kind == "Transpose":
        axes = options.get("axes")
        if axes is None or len(axes) != len(shape) + 1 or int(axes[0]) != 0:
            raise UnsupportedLayerError(name, kind, f"axes {axes} move the batch axis; Permute keeps it first")
        return [builtin("Permute", name, x, dims=[int(a) for a in axes[1:]])]
    return [builtin("Reshape", name, x, target_shape=_reshaped(name, kind, shape, options))]


def _shape(name: str, kind: str, ref: dict) -> list[int]:
    """The per-sample shape Keras 3 wrote beside a tensor reference; every axis must be sized."""
    shape = (ref.get("config") or {}).get("shape")
    if not isinstance(shape, list) or len(shape) < 2 or any(d is None for d in shape[1:]):
        raise UnsupportedLayerError(name, kind, f"its input's shape {shape} is not fully known")
    return [int(d) for d in shape[1:]]


def _axes(name: str, kind: str, axis, rank: int) -> list[int]:
    """``axis`` (an int, a list, or None: every axis) as sorted positive axes of a batch-first tensor of ``rank``
    per-sample axes; the batch axis (0) is refused."""
    raw = list(range(rank + 1)) if axis is None else [axis] if isinstance(axis, int) else list(axis)
    out = sorted(int(a) % (rank + 1) for a in raw)
    if 0 in out:
        raise UnsupportedLayerError(name, kind, f"axis {axis} includes the batch axis")
    return out


def _reshaped(name: str, kind: str, shape: list[int], options: dict) -> list[int]:
    """The per-sample shape ``expand_dims`` / ``squeeze`` / ``reshape`` give ``shape``."""
    if kind == "ExpandDims" and set(options) <= {"axis"}:
        axis = int(options.get("axis", 0))
        at = axis % (len(shape) + 2)
        if at == 0:
            raise UnsupportedLayerError(name, kind, "a new axis before the batch axis")
        return [*shape[: at - 1], 1, *shape[at - 1 :]]
    if kind == "Squeeze" and set(options) <= {"axis"}:
        axis = options.get("axis")
        drop = [i + 1 for i, d in enumerate(shape) if d == 1] if axis is None else _axes(name, kind, axis, len(shape))
        if any(shape[a - 1] != 1 for a in drop):
            raise UnsupportedLayerError(name, kind, f"squeezes axis {axis} of shape {shape}, which is not 1")
        return [d for i, d in enumerate(shape) if i + 1 not in drop]
    if kind == "Reshape" and set(options) <= {"newshape"}:
        new = list(options.get("newshape") or [])
        if not new or new[0] not in (-1, None):
            raise UnsupportedLayerError(name, kind, f"reshapes to {new}, which does not keep the batch axis first")
        target = [int(d) for d in new[1:]]
        if target.count(-1) > 1 or (-1 not in target and math.prod(target) != math.prod(shape)):
            raise UnsupportedLayerError(name, kind, f"cannot reshape {shape} to {target}")
        return target
    raise UnsupportedLayerError(name, kind, f"options {sorted(options)} have no built-in layer equivalent")


def _pooled(name: str, kind: str, x: dict, shape: list[int], options: dict, builtin, fresh) -> list[dict]:
    """A mean / max / sum over the axes between the batch and the channels as global pooling (1D to 3D)."""
    if set(options) - {"axis", "keepdims", "initial"} or options.get("initial") is not None:
        raise UnsupportedLayerError(name, kind, f"options {sorted(options)} have no built-in layer equivalent")
    rank = len(shape)
    axes = _axes(name, kind, options.get("axis"), rank)
    if axes != list(range(1, rank)) or not 1 <= rank - 1 <= 3:
        raise UnsupportedLayerError(
            name, kind, f"reduces axes {axes} of a {rank}-axis sample; built-in layers pool the axes between the "
            "batch and the channels only"
        )  # fmt: skip
    layer = f"{_POOLING[kind]}{rank - 1}D"
    keepdims = bool(options.get("keepdims", False))
    if kind != "Sum":
        return [builtin(layer, name, x, keepdims=keepdims, data_format="channels_last")]
    mean = fresh(f"{name}_mean")
    positions = math.prod(shape[:-1])
    return [
        builtin(layer, mean, x, keepdims=keepdims, data_format="channels_last"),
        builtin("Rescaling", name, tensor_ref(mean), scale=float(positions), offset=0.0),
    ]


def _patches(name: str, kind: str, x: dict, shape: list[int], options: dict, builtin, fresh) -> list[dict]:
    """``extract_patches`` of p x q patches side by side (strides = size, valid, channels last) on an image of
    H x W x C that they tile: [H/p, W/q, p*q*C], each patch's values row by row, as TensorFlow orders them."""
    size = options.get("size")
    p, q = (size, size) if isinstance(size, int) else tuple(size or (0, 0))
    strides = options.get("strides")
    strides = (p, q) if strides is None else (strides, strides) if isinstance(strides, int) else tuple(strides)
    rate = options.get("dilation_rate", 1)
    plain = tuple(strides) == (p, q) and rate in (1, [1, 1], (1, 1)) and options.get("padding", "valid") == "valid"
    plain = plain and options.get("data_format") in (None, "channels_last") and len(shape) == 3 and p > 0 and q > 0
    if not plain or shape[0] % p or shape[1] % q:
        raise UnsupportedLayerError(
            name, kind, f"patches of {options} on a {shape} image; deploykit reads patches side by side that tile "
            "the image (strides equal to the size, valid padding, channels last)"
        )  # fmt: skip
    (h, w, c), split, moved = shape, fresh(f"{name}_rows"), fresh(f"{name}_moved")
    return [
        builtin("Reshape", split, x, target_shape=[h // p, p, w // q, q, c]),
        builtin("Permute", moved, tensor_ref(split), dims=[1, 3, 2, 4, 5]),
        builtin("Reshape", name, tensor_ref(moved), target_shape=[h // p, w // q, p * q * c]),
    ]


def _item(name: str, kind: str, x: dict, shape: list[int], key, builtin, fresh) -> list[dict]:
    """``x[key]``: each cut axis cropped (:func:`_crop`), then the indexed axes dropped by a ``Reshape``."""
    kept, dropped = _kept_ranges(name, kind, shape, key)
    layers, source, now = [], x, list(shape)
    for axis, (begin, end) in enumerate(kept, start=1):
        if (begin, end) != (0, shape[axis - 1]):
            layers += _crop(name, now, axis, (begin, end), source, builtin, fresh)
            source, now[axis - 1] = tensor_ref(layer_name(layers[-1])), end - begin
    final = [d for i, d in enumerate(now) if i + 1 not in dropped]
    if dropped or not layers:  # an index drops its axis (x[:] is the tensor itself: a Reshape to its shape)
        return [*layers, builtin("Reshape", name, source, target_shape=final)]
    layers[-1]["config"]["name"] = name  # the last crop gives the result: it keeps the operation's name
    return layers


def _kept_ranges(name: str, kind: str, shape: list[int], key) -> tuple[list[tuple[int, int]], set[int]]:
    """[begin, end) kept on each per-sample axis, and the axes an integer index drops (1-based), from ``key``."""
    items = key if isinstance(key, (list, tuple)) else [key]
    ellipses = [i for i, k in enumerate(items) if isinstance(k, dict) and k.get("class_name") == "__ellipsis__"]
    rank = len(shape) + 1
    if len(ellipses) > 1 or len(items) - len(ellipses) > rank:
        raise UnsupportedLayerError(name, kind, f"a key {key} of more axes than the tensor's {rank}")
    if ellipses:
        at = ellipses[0]
        items = [*items[:at], *[_ALL] * (rank - len(items) + 1), *items[at + 1 :]]
    items = [*items, *[_ALL] * (rank - len(items))]
    if _bounds(name, kind, items[0], None) != (None, None):
        raise UnsupportedLayerError(name, kind, f"the key {key} cuts the batch axis")
    kept, dropped = [], set()
    for axis, (item, n) in enumerate(zip(items[1:], shape), start=1):
        bounds = _bounds(name, kind, item, n)
        if isinstance(bounds, int):
            kept.append((bounds, bounds + 1))
            dropped.add(axis)
        else:
            begin, end, _step = slice(*bounds).indices(n)
            if end <= begin:
                raise UnsupportedLayerError(name, kind, f"the key {key} keeps nothing of axis {axis}")
            kept.append((begin, end))
    return kept, dropped


_ALL = {"class_name": "__slice__", "config": {"start": None, "stop": None, "step": None}}


def _bounds(name: str, kind: str, item, n: int | None):
    """An integer index (made positive against the axis length ``n``) or a slice's (start, stop) of step 1."""
    if isinstance(item, int) and not isinstance(item, bool) and n is not None and -n <= item < n:
        return item % n
    if isinstance(item, dict) and item.get("class_name") == "__slice__":
        config = item.get("config") or {}
        bounds = (config.get("start"), config.get("stop"))
        if config.get("step") in (None, 1) and all(b is None or isinstance(b, int) for b in bounds):
            return bounds
    raise UnsupportedLayerError(
        name, kind, f"a key item {item}; deploykit reads integer indices and slices of step 1 into the axis"
    )


def _crop(name: str, shape: list[int], axis: int, kept: tuple[int, int], x: dict, builtin, fresh) -> list[dict]:
    """Keep [begin, end) of per-sample ``axis`` (1-based) of a tensor of per-sample ``shape``: ``Cropping1D`` on
    that axis, the axis moved first (``Permute``) and the others flattened around it (``Reshape``) when needed,
    then put back."""
    (begin, end), n, rank = kept, shape[axis - 1], len(shape)
    order = [axis, *(a for a in range(1, rank + 1) if a != axis)]
    others = [shape[a - 1] for a in order[1:]]
    layers: list[dict] = []

    def add(kind_: str, **config) -> None:
        source = tensor_ref(layer_name(layers[-1])) if layers else x
        layers.append(builtin(kind_, fresh(f"{name}_{kind_.lower()}"), source, **config))

    if axis != 1:
        add("Permute", dims=order)
    if rank != 2:
        add("Reshape", target_shape=[n, math.prod(others)])
    add("Cropping1D", cropping=[begin, n - end])
    if rank != 2:
        add("Reshape", target_shape=[end - begin, *others])
    if axis != 1:
        add("Permute", dims=[order.index(a) + 1 for a in range(1, rank + 1)])
    return layers
