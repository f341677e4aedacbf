"""The int8 weight clip search, in numpy: the part of the int8 preparation that only needs a kernel and its inputs.

Both preparations call it, on a Keras model (:mod:`deploykit.export.int8_prep`) and on a float32 ONNX file
(:mod:`deploykit.export.onnx_int8_prep`), through the layer a kernel belongs to as the graph core describes it
(:class:`deploykit.core.graph.LayerSpec`: Dense, Conv1D / Conv2D, DepthwiseConv2D, channels last). Each output
channel's kernel column is clipped to the threshold that minimises the calibration-data error of its simulated int8
weights, the mean effect of the clipping moves into the bias, and what is left is bounded so the column's
requantization multiplier stays below :data:`MAX_REQUANTIZATION` (see :mod:`deploykit.export.int8_prep` for why).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deploykit.records import Record

#: Candidate clip thresholds, as fractions of each column's largest |weight|: two per decade down to
#: 1e-10, far enough to reach the ordinary weights of a column that also holds a row scaled by 1/1e-7 ...
CLIP_FRACTIONS = np.geomspace(1.0, 1e-10, 21)
#: ... then ten per decade around each column's best coarse threshold.
REFINE_FACTORS = np.geomspace(10**0.5, 10**-0.5, 11)
INT8_LEVELS = 127
#: The largest requantization multiplier deploykit lets a Dense layer keep. XNNPACK refuses >= 256
#: (and crashes on it); the margin covers the difference between this estimate and the converter's.
MAX_REQUANTIZATION = 32.0
#: Receptive fields a conv's clip search samples from the calibration data (bounds memory and time) ...
MAX_PATCHES = 8192
#: ... at most this many values in all (patches x taps x input channels), so a wide layer (EfficientNet's 5x5
#: depthwise convs over 1152 channels: 8192 x 28,800 float64 = 1.9 GB, minutes of clip search per layer) samples
#: fewer patches: the search's cost then grows with the layer's weights, not with their square ...
MAX_PATCH_VALUES = 1 << 22
#: ... and never fewer than this many (each column's clip is fitted on at least this many rows).
MIN_PATCHES = 512


@dataclass
class LayerClip(Record):
    """One Dense or conv kernel after clipping (columns: output channels)."""

    name: str
    columns: int
    columns_clipped: int
    columns_bounded: int  # columns clipped further to keep the requantization multiplier < MAX_REQUANTIZATION
    error_ratio: float  # simulated int8 weight error after / before clipping, on the calibration data


def clippable(spec) -> bool:
    """Dense, and the convolutions whose kernel int8 stores per output channel (channels last)."""
    from deploykit.core.layers import Role

    if spec.support.role is Role.DENSE:
        return True
    return conv_kernel(spec) and spec.config.get("data_format", "channels_last") == "channels_last"


def conv_kernel(spec) -> bool:
    """A convolution whose kernel reads the layer's input, clipped per output channel (the layer table's kernel
    layout: Conv1D / Conv2D, and DepthwiseConv2D per input channel x multiplier; not SeparableConv2D's pointwise)."""
    from deploykit.core.layers import KernelLayout

    kernel = spec.support.kernel
    return kernel is not None and kernel.reads_input and kernel.layout in (KernelLayout.CONV, KernelLayout.DEPTHWISE)


def layer_rows(
    specs, inputs: Callable[[np.ndarray], list[np.ndarray]], calibration: np.ndarray, batch: int = 32
) -> list[tuple[np.ndarray, float]]:
    """Per layer: (its input rows on the calibration data, the int8 scale of its input tensor).

    ``inputs(part)``: the layers' inputs on a batch of calibration samples, channels last. A Dense layer's rows are
    its inputs, one per sample; a conv's are up to :data:`MAX_PATCHES` receptive fields, sampled batch by batch so a
    large feature map is never held whole, and so are the positions of a Dense layer applied to every position of a
    sequence or feature map (ConvNeXt's pointwise layers, a Dense after ``return_sequences``): its rows are its
    input's last axis. Rows stay in the activations' own dtype (:func:`clip_kernel` makes one layer's float64 at a
    time): every layer's rows are held at once, half the memory.
    """
    rng = np.random.default_rng(0)
    rows: list[list[np.ndarray]] = [[] for _ in specs]
    low, high = np.zeros(len(specs)), np.zeros(len(specs))  # the calibration range always holds 0
    for start in range(0, len(calibration), batch):
        part = calibration[start : start + batch]
        for k, (spec, h) in enumerate(zip(specs, inputs(part))):
            low[k], high[k] = min(low[k], float(h.min())), max(high[k], float(h.max()))
            take = -(-patch_count(spec) * len(part) // len(calibration))
            if conv_kernel(spec):
                rows[k].append(receptive_fields(spec, h, take, rng))
            elif h.ndim > 2:
                flat = h.reshape(-1, h.shape[-1])
                picked = np.sort(rng.choice(len(flat), size=min(take, len(flat)), replace=False))
                rows[k].append(flat[picked])
            else:
                rows[k].append(h.reshape(len(h), -1))
    return [(np.concatenate(r), (hi - lo) / 255.0) for r, lo, hi in zip(rows, low, high)]


def patch_count(spec) -> int:
    """The rows a conv's (or a per-position Dense layer's) clip search samples: MAX_PATCHES, fewer for a wide layer
    (MAX_PATCH_VALUES)."""
    kernel = spec.weights[0]
    fan_in = int(np.prod(kernel.shape[:-1]))  # taps x input channels (a depthwise conv's: x its channels, grouped)
    return int(min(MAX_PATCHES, max(MIN_PATCHES, MAX_PATCH_VALUES // max(1, fan_in))))


def simulate_int8(weights: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Symmetric per-column int8 quantize-dequantize of ``weights`` clipped to ``threshold``."""
    scale = np.where(threshold > 0, threshold, 1.0) / INT8_LEVELS
    return np.clip(np.round(np.clip(weights, -threshold, threshold) / scale), -INT8_LEVELS, INT8_LEVELS) * scale


def clip_kernel(spec, rows: np.ndarray, in_scale: float) -> LayerClip:
    """Clip one Dense or conv kernel (in place in ``spec``) per output channel; ``rows``: its inputs or patches.

    A convolution is a Dense layer applied to every receptive field (patch), so the Dense search
    runs on the sampled patches. A DepthwiseConv2D output channel ``c * multiplier + j`` reads
    input channel ``c`` only: one group of columns per input channel, each with its own patch values.
    """
    from deploykit.core.layers import KernelLayout

    rows = np.asarray(rows, np.float64)  # kept in the activations' own dtype until here: half the memory of all layers
    if spec.support.kernel.layout is not KernelLayout.DEPTHWISE:
        return _clip_matrix(spec, rows, in_scale)
    kernel = spec.weights[0].astype(np.float64)
    taps, cin = int(np.prod(kernel.shape[:-2])), kernel.shape[-2]
    grouped = np.ascontiguousarray(rows.reshape(len(rows), taps, cin).transpose(2, 0, 1))
    clipped, clip = _clip_columns(spec, grouped, kernel.reshape(taps, cin, -1).transpose(1, 0, 2), in_scale)
    spec.weights[0] = clipped.transpose(1, 0, 2).reshape(kernel.shape)
    return clip


def _clip_matrix(spec, rows: np.ndarray, in_scale: float) -> LayerClip:
    """A Dense or Conv kernel: one column per output channel over (taps x) input channels."""
    kernel = spec.weights[0].astype(np.float64)
    clipped, clip = _clip_columns(spec, rows[None], kernel.reshape(1, -1, kernel.shape[-1]), in_scale)
    spec.weights[0] = clipped.reshape(kernel.shape)
    return clip


def clip_dense(spec, h: np.ndarray) -> LayerClip:
    """Clip one Dense kernel (in place in ``spec``) per column on its inputs ``h``; the bias absorbs the mean change."""
    return _clip_matrix(spec, h.reshape(len(h), -1).astype(np.float64), range_scale(h))


def receptive_fields(spec, x: np.ndarray, take: int, rng) -> np.ndarray:
    """``take`` receptive fields of a conv over ``x`` drawn at random, as rows in the kernel's (taps, channels) order.

    The windows are the convolution's: its strides, dilation and padding (``same`` as TensorFlow
    pads, ``causal`` zeros before a sequence).
    """
    config = spec.config
    one_d = spec.class_name == "Conv1D"
    size, strides, rates = (
        tuple(config.get(k) or (1,) * (1 if one_d else 2)) for k in ("kernel_size", "strides", "dilation_rate")
    )
    padding = str(config.get("padding", "valid")).lower()
    if one_d:
        x, size, strides, rates = x[:, None], (1, *size), (1, *strides), (1, *rates)
    if padding == "causal":
        x, padding = np.pad(x, ((0, 0), (0, 0), ((size[1] - 1) * rates[1], 0), (0, 0))), "valid"
    pads, outs = [], []
    for n_in, k, stride, rate in zip(x.shape[1:3], size, strides, rates):
        span = (k - 1) * rate + 1
        out = -(-n_in // stride) if padding == "same" else (n_in - span) // stride + 1
        total = max((out - 1) * stride + span - n_in, 0) if padding == "same" else 0
        pads.append((total // 2, total - total // 2))
        outs.append(out)
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    positions = len(x) * outs[0] * outs[1]
    n, i, j = np.unravel_index(
        np.sort(rng.choice(positions, size=min(take, positions), replace=False)), (len(x), *outs)
    )
    rows = (i * strides[0])[:, None, None] + (np.arange(size[0]) * rates[0])[None, :, None]
    cols = (j * strides[1])[:, None, None] + (np.arange(size[1]) * rates[1])[None, None, :]
    return x[n[:, None, None], rows, cols].reshape(len(n), -1)


def _clip_columns(spec, x: np.ndarray, kernel: np.ndarray, in_scale: float) -> tuple[np.ndarray, LayerClip]:
    """The clipped ``kernel`` and its record; the mean change moves into ``spec``'s bias.

    Grouped columns: ``out[g, n] = x[g, n] @ kernel[g]`` (one group for Dense and Conv, one per input
    channel for a depthwise conv). Column ``(g, m)`` is output channel ``g * M + m``.
    """
    mean = x.mean(axis=1)
    centred = np.where(x.std(axis=1, keepdims=True) > 0, x - mean[:, None], 0.0)  # constant features add no error
    error = _error_of(centred)
    largest = np.abs(kernel).max(axis=1)
    best_t = largest.copy()
    best_err = first_err = _int8_error(error, kernel, largest)
    for anchor, factors in ((largest, CLIP_FRACTIONS[1:]), (None, REFINE_FACTORS)):
        anchor = best_t.copy() if anchor is None else anchor  # the refinement centres on the coarse best
        for factor in factors:
            t = np.minimum(anchor * factor, largest)
            err = _int8_error(error, kernel, t)
            better = err < best_err
            best_err, best_t = np.where(better, err, best_err), np.where(better, t, best_t)
    bounded = _bound_requantization(spec, x, kernel, best_t, mean, in_scale)
    clipped = np.clip(kernel, -bounded[:, None], bounded[:, None])
    _set_bias(spec, _shift(mean, kernel - clipped).ravel())
    total = float(first_err.sum())
    return clipped.astype(np.float32), LayerClip(
        spec.name,
        int(largest.size),
        int(np.count_nonzero(bounded < largest)),
        int(np.count_nonzero(bounded < best_t)),
        float(best_err.sum() / total) if total > 0 else 1.0,
    )


def _error_of(centred: np.ndarray):
    """``change -> per-column squared output error`` on the centred inputs (g, n, r).

    Through the Gram matrix ``centred^T centred`` when there are more rows than inputs (a conv's
    patches): the same sum, at r^2 instead of n * r operations per column and candidate.
    """
    if centred.shape[1] > centred.shape[2]:
        gram = centred.transpose(0, 2, 1) @ centred
        return lambda change: ((gram @ change) * change).sum(axis=1)
    return lambda change: ((centred @ change) ** 2).sum(axis=1)


def _int8_error(error, kernel: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Per column: squared error that int8 weights clipped to ``threshold`` add on the centred calibration inputs."""
    return error(kernel - simulate_int8(kernel, threshold[:, None]))


def _shift(mean: np.ndarray, change: np.ndarray) -> np.ndarray:
    """Per column (g, m): the mean output change, ``mean[g] @ change[g]``."""
    return (mean[:, None] @ change)[:, 0]


def _bound_requantization(
    spec, x: np.ndarray, kernel: np.ndarray, threshold: np.ndarray, mean: np.ndarray, in_scale: float
) -> np.ndarray:
    """Lower ``threshold`` where a column's requantization multiplier would reach :data:`MAX_REQUANTIZATION`.

    Scales are estimated as the int8 converters set them: activations from the
    calibration range (which always holds 0) over 255 levels, weights
    symmetric per column over 127. Clipping narrows the output range, which
    raises every multiplier a little, so this repeats until all are bounded.
    A column whose output range comes from one barely moving feature
    converges only once the other features (or the bias) set that range.
    ``in_scale`` is the layer input's (a conv's sampled patches may miss its extremes).
    """
    threshold = threshold.copy()
    for _ in range(64):
        clipped = np.clip(kernel, -threshold[:, None], threshold[:, None])
        bias = _bias(spec, threshold.size).reshape(threshold.shape) + _shift(mean, kernel - clipped)
        out = x @ clipped + bias[:, None]
        if spec.config.get("activation") in ("relu", "relu6"):  # fused into the layer by the converters
            out = np.maximum(out, 0.0)
        limit = MAX_REQUANTIZATION * INT8_LEVELS * range_scale(out) / in_scale if in_scale > 0 else np.inf
        if np.all(np.abs(clipped).max(axis=1) <= limit):
            return threshold
        threshold = np.minimum(threshold, 0.9 * limit)
    return threshold


def range_scale(values: np.ndarray) -> float:
    """The per-tensor scale of an int8 activation calibrated on ``values``: range including 0, over 255 levels."""
    return float(max(values.max(), 0.0) - min(values.min(), 0.0)) / 255.0


def _bias(spec, units: int) -> np.ndarray:
    return spec.weights[1].astype(np.float64) if spec.config.get("use_bias", True) else np.zeros(units)


def _set_bias(spec, shift: np.ndarray) -> None:
    """Add ``shift`` (the mean effect of the clipping) to ``spec``'s bias, adding a bias if it has none."""
    if spec.config.get("use_bias", True):
        spec.weights[-1] = (spec.weights[-1].astype(np.float64) + shift).astype(np.float32)
    elif np.any(shift != 0):
        spec.config["use_bias"] = True
        spec.weights.append(shift.astype(np.float32))
