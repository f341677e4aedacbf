"""Calibration samples, and the model preparation every calibrated int8 export runs first.

int8 stores one scale per tensor (activations) or per output channel
(weights). A per-feature input standardization breaks that: a feature that
is (nearly) constant in training gets a multiplier like 1/sqrt(1e-6) = 1000,
so the multiplier tensor (or, once folded, that kernel row) sets the int8
scale and every ordinary weight rounds to zero. Measured on the digits
fixture: 96% -> 11% accuracy. :func:`prepare_for_int8` therefore

1. folds BatchNormalization and Normalization into the Dense layers
   (``deploykit.fold``, exact), so the int8 graph takes the raw inputs, and
2. clips each Dense kernel column to the threshold that minimises the
   calibration-data error of its simulated int8 weights (symmetric, per
   output channel, 127 levels), moving the mean effect of the clipping into
   the bias (bias correction). Zeros stay zeros. The candidate thresholds
   reach far below the largest weight: a feature that is constant in the
   training data (std 0, so Keras divides by its epsilon 1e-7) leaves a
   kernel row ~1e7 times the others, which costs nothing to clip on data
   where that feature does not move, and
3. bounds what is left so that every column's requantization multiplier
   ``input scale x weight scale / output scale`` (estimated from the
   calibration ranges, as the converters do) stays below
   :data:`MAX_REQUANTIZATION`. XNNPACK, LiteRT's default CPU delegate,
   rejects a multiplier >= 256; with a float ELU between the int8 layers its
   error path then double-frees (``free(): double free detected in tcache
   2``, SIGABRT in ``allocate_tensors``). Measured on the book's Fashion
   model: multipliers up to 99,000 in the first layer; with only those
   scales edited, it crashes from 256.0 on and loads below.

The prepared model is only the input of the int8 converters; validation
compares the int8 artifact with the original model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deploykit.errors import DataError
from deploykit.records import Record

#: Candidate clip thresholds, as fractions of each column's largest |weight|: two per decade down to
#: 1e-10, far enough to reach the ordinary weights of a column that also holds a row scaled by 1/1e-7 ...
CLIP_FRACTIONS = np.geomspace(1.0, 1e-10, 21)
#: ... then ten per decade around each column's best coarse threshold.
REFINE_FACTORS = np.geomspace(10 ** 0.5, 10 ** -0.5, 11)
INT8_LEVELS = 127
#: The largest requantization multiplier deploykit lets a Dense layer keep. XNNPACK refuses >= 256
#: (and crashes on it); the margin covers the difference between this estimate and the converter's.
MAX_REQUANTIZATION = 32.0


@dataclass
class LayerClip(Record):
    """One Dense kernel after clipping."""

    name: str
    columns: int
    columns_clipped: int
    columns_bounded: int  # columns clipped further to keep the requantization multiplier < MAX_REQUANTIZATION
    error_ratio: float  # simulated int8 weight error after / before clipping, on the calibration data


@dataclass
class Int8Preparation(Record):
    """What :func:`prepare_for_int8` did."""

    folded: list[str]  # "name (kind) -> dense"
    clipped: list[LayerClip]
    calibration_samples: int
    max_abs_diff: float  # prepared vs original model outputs on the calibration data
    steps: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.steps:
            if self.folded:
                self.steps.append(f"fold({len(self.folded)} layers)")
            n = sum(1 for c in self.clipped if c.columns_clipped)
            self.steps.append(f"int8_weight_clip({n} of {len(self.clipped)} dense layers)")
            bounded = sum(c.columns_bounded for c in self.clipped)
            if bounded:
                self.steps.append(f"int8_requantization_bound({bounded} columns)")


def calibration_samples(source, n: int, input_shape: tuple[int, ...], seed: int = 42) -> np.ndarray:
    """Up to ``n`` float32 samples from a Dataset's training split or an array of inputs."""
    if hasattr(source, "sample_train"):
        x = source.sample_train(n, seed=seed)
    else:
        x = np.asarray(source)
        if x.ndim < 2 or len(x) == 0:
            raise DataError(f"calibration data must be a non-empty array of inputs, got shape {x.shape}")
        if len(x) > n:
            idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
            x = x[idx]
    x = np.asarray(x, dtype=np.float32)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"calibration data has inputs of shape {tuple(x.shape[1:])}, but the model expects {tuple(input_shape)}")
    if not np.isfinite(x).all():
        raise DataError("calibration data holds NaN or inf values")
    return x


def prepare_for_int8(model, calibration: np.ndarray) -> tuple[object, Int8Preparation]:
    """Return ``(prepared_model, Int8Preparation)``; ``model`` is not changed."""
    from deploykit.backend import keras
    from deploykit.fold import fold_batchnorm
    from deploykit.graph import graph_from_model, to_keras
    from deploykit.layers import Role

    folded, report = fold_batchnorm(model)
    graph = graph_from_model(folded, unsafe=True)  # any graph: only its Dense kernels are clipped
    dense = [(node.spec, folded.get_layer(node.name)) for node in graph.nodes if node.spec.support.role is Role.DENSE]
    probe = keras.Model(folded.inputs, [layer.input for _, layer in dense])
    inputs = probe(calibration, training=False)
    inputs = [np.asarray(h, dtype=np.float64) for h in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    clipped = [_clip_dense(spec, h) for (spec, _), h in zip(dense, inputs)]
    prepared = to_keras(graph)
    diff = np.abs(np.asarray(prepared(calibration, training=False)) - np.asarray(model(calibration, training=False)))
    folded_names = [f"{f.name} ({f.kind}) -> {f.target}" for f in report.folded]
    return prepared, Int8Preparation(folded_names, clipped, len(calibration), float(diff.max()))


def int8_source(model, data, int8: bool, n: int, input_shape: tuple[int, ...], seed: int):
    """What an exporter converts: ``(model, calibration samples or None, Int8Preparation or None)``.

    With calibration data and an int8 target, ``n`` samples are drawn and the
    model goes through :func:`prepare_for_int8`; otherwise the model is used as it is.
    """
    if data is None or not int8:
        return model, None, None
    calibration = calibration_samples(data, n, input_shape, seed)
    source, prep = prepare_for_int8(model, calibration)
    return source, calibration, prep


def simulate_int8(weights: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Symmetric per-column int8 quantize-dequantize of ``weights`` clipped to ``threshold``."""
    scale = np.where(threshold > 0, threshold, 1.0) / INT8_LEVELS
    return np.clip(np.round(np.clip(weights, -threshold, threshold) / scale), -INT8_LEVELS, INT8_LEVELS) * scale


def _clip_dense(spec, h: np.ndarray) -> LayerClip:
    """Clip one Dense kernel (in place in ``spec``) per column; the bias absorbs the mean change."""
    h = h.reshape(len(h), -1)
    kernel = spec.weights[0].astype(np.float64)
    mean = h.mean(axis=0)
    live = h.std(axis=0) > 0  # rows of features constant on the calibration data add no error
    centred = (h - mean)[:, live]
    largest = np.abs(kernel).max(axis=0)
    best_t = largest.copy()
    best_err = first_err = _int8_error(centred, kernel[live], largest)
    for anchor, factors in ((largest, CLIP_FRACTIONS[1:]), (None, REFINE_FACTORS)):
        anchor = best_t.copy() if anchor is None else anchor  # the refinement centres on the coarse best
        for factor in factors:
            t = np.minimum(anchor * factor, largest)
            err = _int8_error(centred, kernel[live], t)
            better = err < best_err
            best_err, best_t = np.where(better, err, best_err), np.where(better, t, best_t)
    bounded = _bound_requantization(spec, h, kernel, best_t, mean)
    clipped = np.clip(kernel, -bounded, bounded)
    _set_kernel(spec, kernel, clipped, mean)
    total = float(first_err.sum())
    return LayerClip(spec.name, int(kernel.shape[1]), int(np.count_nonzero(bounded < largest)),
                     int(np.count_nonzero(bounded < best_t)), float(best_err.sum() / total) if total > 0 else 1.0)


def _int8_error(centred: np.ndarray, kernel: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Per column: squared error that int8 weights clipped to ``threshold`` add on the centred calibration inputs."""
    return ((centred @ (kernel - simulate_int8(kernel, threshold))) ** 2).sum(axis=0)


def _bound_requantization(spec, h: np.ndarray, kernel: np.ndarray, threshold: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Lower ``threshold`` where a column's requantization multiplier would reach :data:`MAX_REQUANTIZATION`.

    Scales are estimated as the int8 converters set them: activations from the
    calibration range (which always holds 0) over 255 levels, weights
    symmetric per column over 127. Clipping narrows the output range, which
    raises every multiplier a little, so this repeats until all are bounded.
    A column whose output range comes from one barely moving feature
    converges only once the other features (or the bias) set that range.
    """
    in_scale = _range_scale(h)
    threshold = threshold.copy()
    for _ in range(64):
        clipped = np.clip(kernel, -threshold, threshold)
        bias = _bias(spec, kernel.shape[1]) + mean @ (kernel - clipped)
        out = h @ clipped + bias
        if spec.config.get("activation") in ("relu", "relu6"):  # fused into the layer by the converters
            out = np.maximum(out, 0.0)
        limit = MAX_REQUANTIZATION * INT8_LEVELS * _range_scale(out) / in_scale if in_scale > 0 else np.inf
        if np.all(np.abs(clipped).max(axis=0) <= limit):
            return threshold
        threshold = np.minimum(threshold, 0.9 * limit)
    return threshold


def _range_scale(values: np.ndarray) -> float:
    """The per-tensor scale of an int8 activation calibrated on ``values``: range including 0, over 255 levels."""
    return float(max(values.max(), 0.0) - min(values.min(), 0.0)) / 255.0


def _bias(spec, units: int) -> np.ndarray:
    return spec.weights[1].astype(np.float64) if spec.config.get("use_bias", True) else np.zeros(units)


def _set_kernel(spec, kernel: np.ndarray, clipped: np.ndarray, mean: np.ndarray) -> None:
    """Store ``clipped`` in ``spec`` and move the mean effect of the clipping into its bias (added if needed)."""
    shift = mean @ (kernel - clipped)
    if spec.config.get("use_bias", True):
        spec.weights[1] = (spec.weights[1].astype(np.float64) + shift).astype(np.float32)
    elif np.any(shift != 0):
        spec.config["use_bias"] = True
        spec.weights.append(shift.astype(np.float32))
    spec.weights[0] = clipped.astype(np.float32)
