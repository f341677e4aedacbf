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
   the bias (bias correction). Zeros stay zeros.

The prepared model is only the input of the int8 converters; validation
compares the int8 artifact with the original model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deploykit.errors import DataError
from deploykit.records import Record

#: Candidate clip thresholds, as fractions of each column's largest |weight|.
CLIP_FRACTIONS = np.geomspace(1.0, 1e-4, 41)
INT8_LEVELS = 127


@dataclass
class LayerClip(Record):
    """One Dense kernel after clipping."""

    name: str
    columns: int
    columns_clipped: int
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
    centred = h - mean
    largest = np.abs(kernel).max(axis=0)
    best_t = largest.copy()
    best_err = first_err = ((centred @ (kernel - simulate_int8(kernel, largest))) ** 2).sum(axis=0)
    for fraction in CLIP_FRACTIONS[1:]:
        t = largest * fraction
        err = ((centred @ (kernel - simulate_int8(kernel, t))) ** 2).sum(axis=0)
        better = err < best_err
        best_err, best_t = np.where(better, err, best_err), np.where(better, t, best_t)
    clipped = np.clip(kernel, -best_t, best_t)
    shift = mean @ (kernel - clipped)
    if spec.config.get("use_bias", True):
        spec.weights[1] = (spec.weights[1].astype(np.float64) + shift).astype(np.float32)
    elif np.any(shift != 0):
        spec.config["use_bias"] = True
        spec.weights.append(shift.astype(np.float32))
    spec.weights[0] = clipped.astype(np.float32)
    total = float(first_err.sum())
    return LayerClip(spec.name, int(kernel.shape[1]), int(np.count_nonzero(best_t < largest)),
                     float(best_err.sum() / total) if total > 0 else 1.0)
