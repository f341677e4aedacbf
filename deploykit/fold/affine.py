"""Per-element affine maps (``y = x * scale + shift``) and the fold math into Dense.

BatchNormalization at inference and input standardization (Normalization) are
per-element affine maps. Each is computed here in float64 from the layer's
stored values, with the exact formula tf_keras uses at inference, so the fold
is exact up to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploykit.core.graph import LayerSpec
from deploykit.core.layers import Absorb, KernelLayout, Role

#: A Normalization folds only when every feature's |mean| / std is at most this: folding costs
#: about log10 of it in float32 digits (100: outputs stay within ~1e-5).
MAX_CANCELLATION = 100.0


class NotFoldable(Exception):
    """A fold that would not be exact; the message says why (it goes into the report)."""


@dataclass
class Affine:
    """``y = x * scale + shift`` on a per-sample tensor of ``shape``; both arrays have that full shape."""

    scale: np.ndarray
    shift: np.ndarray

    @classmethod
    def broadcast(cls, scale: np.ndarray, shift: np.ndarray, shape: tuple[int, ...]) -> Affine:
        return cls(np.broadcast_to(scale, shape).astype(np.float64), np.broadcast_to(shift, shape).astype(np.float64))

    @property
    def max_scale(self) -> float:
        """The largest factor the map multiplies a Dense kernel entry by when folded."""
        return float(np.abs(self.scale).max())

    def then(self, other: Affine) -> Affine:
        """This map followed by ``other`` (same shape)."""
        return Affine(self.scale * other.scale, self.shift * other.scale + other.shift)

    def reshaped(self, shape: tuple[int, ...]) -> Affine:
        """The same map after a Flatten or Reshape (C order, as Keras moves values)."""
        return Affine(self.scale.reshape(shape), self.shift.reshape(shape))

    def inverse_apply(self, y: np.ndarray) -> np.ndarray:
        """The ``x`` with ``x * scale + shift == y`` (batch axis first)."""
        return (y - self.shift) / self.scale

    def last_axis(self, what: str) -> tuple[np.ndarray, np.ndarray]:
        """The per-last-axis vectors; :class:`NotFoldable` if the map varies along another axis."""
        width = self.scale.shape[-1]
        s, t = self.scale.reshape(-1, width), self.shift.reshape(-1, width)
        if not (
            np.array_equal(s, np.broadcast_to(s[:1], s.shape)) and np.array_equal(t, np.broadcast_to(t[:1], t.shape))
        ):
            raise NotFoldable(
                f"its statistics vary along an axis other than the last of shape {self.scale.shape}, "
                f"which {what} does not act on"
            )
        return s[0], t[0]


def _full_shape_stats(values, in_shape: tuple[int, ...], axes) -> np.ndarray:
    """Stats stored for ``axes`` (counting the batch axis) spread to the per-sample shape."""
    ndim = len(in_shape) + 1
    keep = sorted(a % ndim for a in axes)
    full = (None, *in_shape)
    arr = np.asarray(values, dtype=np.float32).astype(np.float64)
    kept_shape = tuple(full[a] for a in keep)
    if arr.ndim == ndim:  # stored with the broadcast shape already (multi-axis BatchNormalization)
        arr = arr.reshape(kept_shape)
    arr = arr * np.ones(kept_shape)
    bshape = [full[a] if a in keep else 1 for a in range(1, ndim)]
    return np.broadcast_to(arr.reshape(bshape), in_shape)


def batchnorm_scale_offset(spec: LayerSpec) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization at inference as ``x * scale + offset`` per feature (float64), from its moving statistics:
    ``scale = gamma / sqrt(var + eps)`` (its own eps, float32 as Keras adds it), ``offset = beta - mean * scale``.

    The one place the formula lives: the fold and the MC Dropout graph (``uncertainty.mc_layers``) both use it.
    """
    cfg = spec.config
    w = [np.asarray(a, np.float64) for a in spec.weights]
    gamma = w.pop(0) if cfg.get("scale", True) else None
    beta = w.pop(0) if cfg.get("center", True) else None
    mean, var = w[0], w[1]
    gamma = np.ones_like(mean) if gamma is None else gamma
    beta = np.zeros_like(mean) if beta is None else beta
    scale = gamma / np.sqrt(var + np.float64(np.float32(cfg.get("epsilon", 1e-3))))
    return scale, beta - mean * scale


def batchnorm_affine(spec: LayerSpec, in_shape: tuple[int, ...]) -> Affine:
    """BatchNormalization at inference (:func:`batchnorm_scale_offset`) on inputs of ``in_shape``."""
    cfg = spec.config
    if cfg.get("renorm") or cfg.get("virtual_batch_size"):
        raise NotFoldable("batch renormalization / virtual batches are not folded")
    axes = cfg.get("axis", -1)
    axes = [axes] if isinstance(axes, int) else list(axes)
    scale, offset = (_full_shape_stats(v, in_shape, axes) for v in batchnorm_scale_offset(spec))
    return Affine.broadcast(scale, offset, in_shape)


def normalization_affine(spec: LayerSpec, in_shape: tuple[int, ...]) -> Affine:
    """tf_keras Normalization: ``(x - mean) / max(sqrt(var), keras epsilon)`` (or its inverse with ``invert``).

    The statistics are in the config when passed to the constructor, else in
    the weights ``[mean, variance, count]`` (after ``adapt``).
    """
    from deploykit.backend import keras

    cfg = spec.config
    axes = cfg.get("axis", (-1,))
    axes = () if axes is None else ((axes,) if isinstance(axes, int) else tuple(axes))
    if cfg.get("mean") is not None:
        mean, var = cfg["mean"], cfg["variance"]
    else:
        mean, var = spec.weights[0], spec.weights[1]
    mean, var = (_full_shape_stats(v, in_shape, axes) for v in (mean, var))
    std = np.maximum(np.sqrt(var), np.float64(np.float32(keras.backend.epsilon())))
    if cfg.get("invert"):
        return Affine.broadcast(std, mean, in_shape)
    # tf_keras subtracts the mean first; the folded Dense adds x * (W / std) and -mean * (W / std)
    # instead, which cancels float32 digits when a feature's mean is far from zero in units of its std.
    cancel = np.abs(mean) / std
    if cancel.max() > MAX_CANCELLATION:
        k = int(np.argmax(cancel))
        raise NotFoldable(
            f"feature {k} has |mean| / std = {cancel.flat[k]:.3g} > {MAX_CANCELLATION:g} (a near-constant "
            "feature?): folding it would lose float32 precision"
        )
    return Affine.broadcast(1.0 / std, -mean / std, in_shape)


def rescaling_affine(spec: LayerSpec, in_shape: tuple[int, ...]) -> Affine:
    """Rescaling: ``x * scale + offset`` (scalars, or per-channel lists)."""
    cfg = spec.config
    scale = np.asarray(cfg.get("scale", 1.0), np.float32).astype(np.float64)
    offset = np.asarray(cfg.get("offset", 0.0), np.float32).astype(np.float64)
    return Affine.broadcast(scale, offset, in_shape)


#: How to read the affine map of each role the layer table marks ``folds_away``.
AFFINE_OF = {
    Role.BATCHNORM: batchnorm_affine,
    Role.NORMALIZATION: normalization_affine,
    Role.RESCALING: rescaling_affine,
}


def layer_affine(spec: LayerSpec, in_shape: tuple[int, ...]) -> Affine:
    return AFFINE_OF[spec.support.role](spec, in_shape)


def _kernel_parts(spec: LayerSpec) -> tuple[np.ndarray, np.ndarray, int]:
    """(kernel, bias, index of the kernel in the weights) in float64; a zero bias when the layer has none.

    The kernel is the one the layer table names (``LayerSupport.kernel``: SeparableConv2D's pointwise kernel
    makes its output channels)."""
    layout = spec.support.kernel
    if layout is None:
        raise NotFoldable(f"{spec.class_name} {spec.name!r} has no kernel to fold into")
    k = layout.index
    kernel = spec.weights[k].astype(np.float64)
    units = layout.units(kernel.shape)
    has_bias = spec.config.get("use_bias", True)
    bias = spec.weights[k + 1].astype(np.float64) if has_bias else np.zeros(units)
    return kernel, bias, k


def _set_kernel(spec: LayerSpec, kernel: np.ndarray, bias: np.ndarray, k: int) -> None:
    dtype = spec.weights[k].dtype
    spec.weights = [*spec.weights[:k], kernel.astype(dtype), bias.astype(dtype)]
    spec.config["use_bias"] = True


def _channels_last(spec: LayerSpec) -> None:
    if spec.config.get("data_format", "channels_last") not in (None, "channels_last"):
        raise NotFoldable(f"{spec.class_name} {spec.name!r} is channels_first")
    if int(spec.config.get("groups", 1) or 1) != 1:
        raise NotFoldable(f"{spec.class_name} {spec.name!r} is a grouped convolution")


def fold_backward(target: LayerSpec, affine: Affine) -> None:
    """Fold a map on a kernel layer's output channels into it: ``W' = W * s`` per output channel, ``b' = b * s + t``."""
    s, t = affine.last_axis(f"{target.class_name} {target.name!r}")
    _channels_last(target)
    kernel, bias, k = _kernel_parts(target)
    if target.support.kernel.layout is KernelLayout.DEPTHWISE:  # output channel c * multiplier + m
        scaled = (kernel.reshape(*kernel.shape[:2], -1) * s).reshape(kernel.shape)
    elif target.support.kernel.layout is KernelLayout.TRANSPOSED:  # Conv2DTranspose: [kh, kw, filters, inputs]
        scaled = kernel * s[:, None]
    else:
        scaled = kernel * s
    _set_kernel(target, scaled, bias * s + t, k)


def fold_forward(affine: Affine, target: LayerSpec) -> None:
    """Fold a map on a Dense / Conv's input channels into it: ``W'' = diag(s) W``, ``b'' = b + t W``.

    Exact for a convolution only when no zero padding meets the shift (valid
    padding, or a map without shift): a padded zero would become ``t`` in the
    original but stays zero in the folded layer.
    """
    s, t = affine.last_axis(f"{target.class_name} {target.name!r}")
    _channels_last(target)
    if target.support.absorbs is not Absorb.BOTH:  # the layer table: Dense, Conv1D, Conv2D
        raise NotFoldable(f"{target.class_name} {target.name!r} does not take a map on its inputs")
    kernel, bias, k = _kernel_parts(target)
    padded = target.support.kernel.layout is not KernelLayout.DENSE and target.config.get("padding", "valid") != "valid"
    if padded and np.any(t != 0):
        raise NotFoldable(
            f"{target.class_name} {target.name!r} pads with zeros ({target.config.get('padding')!r} "
            "padding): a shifted input is not exact there"
        )
    kernel_in = kernel * s[:, None]  # the input-channel axis is second to last
    extra = np.einsum("kio,i->o", kernel.reshape(-1, *kernel.shape[-2:]), t)  # t times every tap
    _set_kernel(target, kernel_in, bias + extra, k)
