"""Calibration samples, and the model preparation every calibrated int8 export runs first.

int8 stores one scale per tensor (activations) or per output channel
(weights). A per-feature input standardization breaks that: a feature that
is (nearly) constant in training gets a multiplier like 1/sqrt(1e-6) = 1000,
so the multiplier tensor (or, once folded, that kernel row) sets the int8
scale and every ordinary weight rounds to zero. Measured on the digits
fixture: 96% -> 11% accuracy. :func:`prepare_for_int8` therefore

1. folds BatchNormalization and Normalization into the Dense layers
   (``deploykit.fold``, exact), so the int8 graph takes the raw inputs, and
2. clips each Dense kernel column (each conv output channel: Conv1D, Conv2D,
   and DepthwiseConv2D per input channel x multiplier, searched on sampled
   receptive fields) to the threshold that minimises the
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

Raw tabular features break the first of these: features from 0.001 to 4,000 folded into the first
kernel leave its rows (and its input tensor) on scales 10^6 apart, which one int8 scale per tensor
cannot hold (breast_cancer: -29 points). ``standardize=True`` (an int8-search fallback) therefore puts
a float standardization back in front of the first Dense layer, from the calibration data's mean and
std, on a coarse grid so the file stays small (:func:`on_grid`), and scales that layer's kernel rows to match
(exact: ``W x + b = (diag(s) W) ((x - m) / s) + (b + m W)``);
the exporters keep that layer in float (:data:`STANDARDIZATION`), so the first quantized layer takes
inputs of one scale. ``fold=False`` (the pipeline's ``--no-fold``) folds nothing at all.

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
#: The float standardization ``standardize=True`` puts in front of the first Dense layer (kept float by the exporters).
STANDARDIZATION = "int8_input_standardization"


@dataclass
class LayerClip(Record):
    """One Dense or conv kernel after clipping (columns: output channels)."""

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
            self.steps.append(f"int8_weight_clip({n} of {len(self.clipped)} layers)")
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
        raise DataError(
            f"calibration data has inputs of shape {tuple(x.shape[1:])}, but the model expects {tuple(input_shape)}"
        )
    if not np.isfinite(x).all():
        raise DataError("calibration data holds NaN or inf values")
    return x


def prepare_for_int8(
    model,
    calibration: np.ndarray,
    *,
    through_dropout: bool = True,
    fold: bool = True,
    standardize: bool = False,
    exact: bool = False,
) -> tuple[object, Int8Preparation]:
    """Return ``(prepared_model, Int8Preparation)``; ``model`` is not changed.

    ``through_dropout=False`` (an MC Dropout model's preparation): no BatchNorm is folded across a
    dropout, whose samples would then no longer drop the folded shift with its unit. ``fold=False``: nothing
    is folded (BatchNorm and Normalization stay layers). ``standardize``: a float standardization of the first
    Dense layer's input goes in front of it (see the module's docstring); it folds the model's own first. ``exact``:
    its constants as measured, not on the grid (:func:`on_grid`).
    """
    from deploykit.core.graph import copy_model, graph_from_model, to_keras
    from deploykit.fold import fold_batchnorm

    if fold or standardize:
        folded, report = fold_batchnorm(model, through_dropout=through_dropout)
    else:
        folded, report = copy_model(model, unsafe=True), None
    if standardize:
        folded = to_keras(_standardized(graph_from_model(folded, unsafe=True), folded, calibration, grid=not exact))
    graph = graph_from_model(folded, unsafe=True)  # any graph: only its Dense and conv kernels are clipped
    specs = [node.spec for node in graph.nodes if _clippable(node.spec)]
    clipped = [
        _clip_rows(spec, rows, in_scale)
        for spec, (rows, in_scale) in zip(specs, _layer_inputs(folded, specs, calibration))
    ]
    prepared = to_keras(graph)
    diff = np.abs(np.asarray(prepared(calibration, training=False)) - np.asarray(model(calibration, training=False)))
    folded_names = [f"{f.name} ({f.kind}) -> {f.target}" for f in report.folded] if report else []
    prep = Int8Preparation(folded_names, clipped, len(calibration), float(diff.max()))
    if standardize:
        prep.steps.insert(0, "float_input_standardization")
    return prepared, prep


def _standardized(graph, model, calibration: np.ndarray, grid: bool = True):
    """``graph`` with a float Normalization (calibration mean and std) in front of its first Dense layer, whose
    kernel rows and bias absorb it exactly. A first kernel layer that is not a Dense one is a StepError (that int8
    try fails, not the run)."""
    from deploykit.core.graph import LayerSpec, Node
    from deploykit.core.layers import Role
    from deploykit.errors import StepError

    first = next((n for n in graph.nodes if n.spec.support.prunable), None)
    if first is None or first.spec.support.role is not Role.DENSE or len(first.inputs) != 1:
        raise StepError(
            "a float input standardization goes in front of a first Dense layer; this model's first "
            f"kernel layer is {first.spec.class_name if first else 'missing'}"
        )
    from deploykit.backend import keras

    probe = keras.Model(model.inputs, model.get_layer(first.name).input)
    h = np.concatenate(
        [np.asarray(probe(calibration[i : i + 256], training=False)) for i in range(0, len(calibration), 256)]
    )
    h = h.reshape(-1, h.shape[-1]).astype(np.float64)
    mean, std = h.mean(axis=0), h.std(axis=0)
    # a constant feature is only centred; a near-constant one (a border pixel) is not blown up past 1% of the typical
    floor = 0.01 * float(np.median(std[std > 0])) if np.any(std > 0) else 1.0
    std = np.where(std > 0, np.maximum(std, floor), 1.0)
    if grid:
        mean, std = on_grid(mean, std)
    kernel, *rest = first.spec.weights
    bias = rest[0].astype(np.float64) if first.spec.config.get("use_bias", True) else np.zeros(kernel.shape[-1])
    first.spec.weights = [
        (kernel.astype(np.float64) * std[:, None]).astype(np.float32),
        (bias + mean @ kernel.astype(np.float64)).astype(np.float32),
    ]
    first.spec.config["use_bias"] = True
    norm = LayerSpec(
        "Normalization",
        {
            "name": STANDARDIZATION,
            "axis": -1,
            "mean": mean.astype(np.float32).tolist(),
            "variance": (std**2).astype(np.float32).tolist(),
            "dtype": "float32",
        },
    )
    graph.nodes.insert(
        graph.nodes.index(first),
        Node(norm, list(first.inputs), first.shape[:-1] + (h.shape[-1],) if first.shape else None),
    )
    first.inputs = [STANDARDIZATION]
    return graph


def on_grid(mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float standardization's constants on a coarse grid: each scale the power of two nearest its std, each
    mean a multiple of half its scale.

    Why: the two vectors are the only float numbers the standardized int8 file adds, one per input feature; as
    measured means and stds they are incompressible (784 of each: 6.1 KiB of the book's 95 %-sparse Fashion network's
    42.7 KiB gzip int8 file, 9 KiB more than plain int8 with the kernel's added precision), on the grid they repeat a
    few dozen values and gzip removes most of them (38.3 KiB). Exact all the same: the first Dense layer absorbs the
    values used, whatever they are; a scale within a factor sqrt(2) of the std and a centre within a quarter of it
    still put every feature on one scale for the int8 input tensor.
    """
    scale = 2.0 ** np.round(np.log2(std))
    return np.round(2.0 * mean / scale) * scale / 2.0, scale


def _layer_inputs(model, specs, calibration: np.ndarray, batch: int = 32) -> list[tuple[np.ndarray, float]]:
    """Per layer: (its input rows on the calibration data, the int8 scale of its input tensor).

    A Dense layer's rows are its inputs; a conv's are up to :data:`MAX_PATCHES` receptive fields,
    sampled batch by batch so a large feature map is never held whole.
    """
    from deploykit.backend import keras

    probe = keras.Model(model.inputs, [model.get_layer(spec.name).input for spec in specs])
    rng = np.random.default_rng(0)
    rows: list[list[np.ndarray]] = [[] for _ in specs]
    low, high = np.zeros(len(specs)), np.zeros(len(specs))  # the calibration range always holds 0
    for start in range(0, len(calibration), batch):
        part = calibration[start : start + batch]
        outputs = probe(part, training=False)
        for k, (spec, h) in enumerate(zip(specs, outputs if isinstance(outputs, (list, tuple)) else [outputs])):
            h = np.asarray(h)
            low[k], high[k] = min(low[k], float(h.min())), max(high[k], float(h.max()))
            if _conv_kernel(spec):
                rows[k].append(_patches(spec, h, -(-_patch_count(spec) * len(part) // len(calibration)), rng))
            else:
                rows[k].append(h.reshape(len(h), -1).astype(np.float64))
    return [(np.concatenate(r), (hi - lo) / 255.0) for r, lo, hi in zip(rows, low, high)]


def _patch_count(spec) -> int:
    """The receptive fields a conv's clip search samples: MAX_PATCHES, fewer for a wide layer (MAX_PATCH_VALUES)."""
    kernel = spec.weights[0]
    fan_in = int(np.prod(kernel.shape[:-1]))  # taps x input channels (a depthwise conv's: x its channels, grouped)
    return int(min(MAX_PATCHES, max(MIN_PATCHES, MAX_PATCH_VALUES // max(1, fan_in))))


def int8_source(
    model,
    data,
    int8: bool,
    n: int,
    input_shape: tuple[int, ...],
    seed: int,
    *,
    fold: bool = True,
    standardize: bool = False,
    exact: bool = False,
):
    """What an exporter converts: ``(model, calibration samples or None, Int8Preparation or None)``.

    With calibration data and an int8 target, ``n`` samples are drawn and the
    model goes through :func:`prepare_for_int8` (``fold``, ``standardize``, ``exact``: its options); otherwise the
    model is used as it is.
    """
    if data is None or not int8:
        return model, None, None
    calibration = calibration_samples(data, n, input_shape, seed)
    options = (fold, standardize, exact)
    source, prep = _LAST_PREPARED.get(model, calibration, options)
    if source is None:
        source, prep = prepare_for_int8(model, calibration, fold=fold, standardize=standardize, exact=exact)
        _LAST_PREPARED.keep(model, calibration, options, source, prep)
    return source, calibration, prep


class _LastPrepared:
    """The last :func:`int8_source` preparation, reused when the next int8 variant asks for the same one.

    An export of several int8 variants (int8-dynamic and int8-static ONNX, int8-full TFLite) prepares the same
    model on the same calibration samples for each: a fold and two model rebuilds, 30 s of a 1.5 M-parameter
    keras.applications network's 60-s int8 export here. The key holds the model (weakly: a model that is gone is
    never matched), a digest of its weights and of the samples, and the options, so a model changed in place or
    other samples prepare again. One entry: at most one extra prepared copy is kept alive.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._model = None  # weakref.ref to the source model
        self._key: tuple = ()
        self._value: tuple = (None, None)

    @staticmethod
    def _key_of(model, calibration: np.ndarray, options: tuple[bool, ...]) -> tuple:
        import hashlib

        digest = hashlib.blake2b(np.ascontiguousarray(calibration).tobytes(), digest_size=16)
        for w in model.weights:
            digest.update(np.ascontiguousarray(np.asarray(w)).tobytes())
        return digest.hexdigest(), calibration.shape, tuple(bool(o) for o in options)

    def get(self, model, calibration: np.ndarray, options: tuple[bool, ...]) -> tuple:
        """``(prepared, a copy of its Int8Preparation)`` when the last preparation matches, else ``(None, None)``."""
        import copy

        with self._lock:
            ref, key, (prepared, prep) = self._model, self._key, self._value
        if ref is None or ref() is not model or key != self._key_of(model, calibration, options):
            return None, None
        return prepared, copy.deepcopy(prep)

    def keep(self, model, calibration: np.ndarray, options: tuple[bool, ...], prepared, prep) -> None:
        import copy
        import weakref

        try:
            ref = weakref.ref(model)
        except TypeError:  # not weakly referable: nothing is kept
            return
        key = self._key_of(model, calibration, options)
        with self._lock:
            self._model, self._key, self._value = ref, key, (prepared, copy.deepcopy(prep))


_LAST_PREPARED = _LastPrepared()


def variant_source(model, data, quant, knobs, input_shape: tuple[int, ...]):
    """:func:`int8_source` for one variant (a :class:`Quantization`) with its :class:`QuantConfig` knobs: what
    both exporters convert (one call, so ONNX and TFLite prepare an int8 model alike)."""
    from deploykit.export.config import Precision

    return int8_source(
        model,
        data,
        quant.precision is Precision.INT8,
        knobs.num_calibration,
        input_shape,
        knobs.seed,
        fold=knobs.fold,
        standardize=knobs.standardize_input,
        exact=knobs.standardize_exact,
    )


def simulate_int8(weights: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Symmetric per-column int8 quantize-dequantize of ``weights`` clipped to ``threshold``."""
    scale = np.where(threshold > 0, threshold, 1.0) / INT8_LEVELS
    return np.clip(np.round(np.clip(weights, -threshold, threshold) / scale), -INT8_LEVELS, INT8_LEVELS) * scale


def _clippable(spec) -> bool:
    """Dense, and the convolutions whose kernel int8 stores per output channel (channels last)."""
    from deploykit.core.layers import Role

    if spec.support.role is Role.DENSE:
        return True
    return _conv_kernel(spec) and spec.config.get("data_format", "channels_last") == "channels_last"


def _conv_kernel(spec) -> bool:
    """A convolution whose kernel reads the layer's input, clipped per output channel (the layer table's kernel
    layout: Conv1D / Conv2D, and DepthwiseConv2D per input channel x multiplier; not SeparableConv2D's pointwise)."""
    from deploykit.core.layers import KernelLayout

    kernel = spec.support.kernel
    return kernel is not None and kernel.reads_input and kernel.layout in (KernelLayout.CONV, KernelLayout.DEPTHWISE)


def _clip_rows(spec, rows: np.ndarray, in_scale: float) -> LayerClip:
    """Clip one Dense or conv kernel (in place in ``spec``) per output channel; ``rows``: its inputs or patches.

    A convolution is a Dense layer applied to every receptive field (patch), so the Dense search
    runs on the sampled patches. A DepthwiseConv2D output channel ``c * multiplier + j`` reads
    input channel ``c`` only: one group of columns per input channel, each with its own patch values.
    """
    from deploykit.core.layers import KernelLayout

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


def _clip_dense(spec, h: np.ndarray) -> LayerClip:
    """Clip one Dense kernel (in place in ``spec``) per column on its inputs ``h``; the bias absorbs the mean change."""
    return _clip_matrix(spec, h.reshape(len(h), -1).astype(np.float64), _range_scale(h))


def _patches(spec, x: np.ndarray, take: int, rng) -> np.ndarray:
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
    return x[n[:, None, None], rows, cols].reshape(len(n), -1).astype(np.float64)


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
        limit = MAX_REQUANTIZATION * INT8_LEVELS * _range_scale(out) / in_scale if in_scale > 0 else np.inf
        if np.all(np.abs(clipped).max(axis=1) <= limit):
            return threshold
        threshold = np.minimum(threshold, 0.9 * limit)
    return threshold


def _range_scale(values: np.ndarray) -> float:
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
