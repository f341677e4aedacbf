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
   :data:`~deploykit.export.int8_clip.MAX_REQUANTIZATION`. XNNPACK, LiteRT's default CPU delegate,
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
from deploykit.export.int8_clip import (
    LayerClip,
    clip_kernel,
    clippable,
    layer_rows,
)
from deploykit.records import Record

#: The float standardization ``standardize=True`` puts in front of the first Dense layer (kept float by the exporters).
STANDARDIZATION = "int8_input_standardization"
#: The preparation step that says it was put in (``Int8Preparation.steps``).
STANDARDIZED = "float_input_standardization"
#: What a try with it says in a report.
STANDARDIZED_NOTE = "inputs standardized in float"


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
    specs = [node.spec for node in graph.nodes if clippable(node.spec)]
    clipped = [
        clip_kernel(spec, rows, in_scale)
        for spec, (rows, in_scale) in zip(specs, _layer_inputs(folded, specs, calibration))
    ]
    prepared = to_keras(graph)
    diff = np.abs(np.asarray(prepared(calibration, training=False)) - np.asarray(model(calibration, training=False)))
    folded_names = [f"{f.name} ({f.kind}) -> {f.target}" for f in report.folded] if report else []
    prep = Int8Preparation(folded_names, clipped, len(calibration), float(diff.max()))
    if standardize:
        prep.steps.insert(0, STANDARDIZED)
    return prepared, prep


def _standardized(graph, model, calibration: np.ndarray, grid: bool = True):
    """``graph`` with a float Normalization (calibration mean and std) in front of its first Dense layer, whose
    kernel rows and bias absorb it exactly. A first kernel layer that is not a Dense one is a StepError (that int8
    try fails, not the run)."""
    from deploykit.core.graph import LayerSpec, Node
    from deploykit.errors import StepError

    first = standardization_target(graph)
    if first is None:
        first = next((n for n in graph.nodes if n.spec.support.prunable), None)
        raise StepError(
            "a float input standardization goes in front of a first Dense layer; this model's first "
            f"kernel layer is {first.spec.class_name if first else 'missing'}"
        )
    from deploykit.backend import keras

    probe = keras.Model(model.inputs, model.get_layer(first.name).input)
    h = np.concatenate(
        [np.asarray(probe(calibration[i : i + 256], training=False)) for i in range(0, len(calibration), 256)]
    )
    mean, std = standardization_scales(h.reshape(-1, h.shape[-1]).astype(np.float64))
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


def standardized_knobs(knobs, quant):
    """``knobs`` (a QuantConfig) with the float standardization on, and named among the layers left in float where
    the variant ``quant`` is calibrated and takes ``exclude`` (its quantizer would quantize it otherwise). What the
    int8 search and ``export``'s recovery both try."""
    import dataclasses

    kept = (*knobs.exclude, STANDARDIZATION) if quant.spec.takes_exclude and quant.needs_calibration else knobs.exclude
    return dataclasses.replace(knobs, standardize_input=True, exclude=kept)


def standardization_target(graph):
    """The node the float standardization goes in front of: the graph's first kernel layer when it is a Dense one
    with one input, else None (the int8 search, export's recovery and the standardization itself ask this)."""
    from deploykit.core.layers import Role

    first = next((n for n in graph.nodes if n.spec.support.prunable), None)
    return first if first is not None and first.spec.support.role is Role.DENSE and len(first.inputs) == 1 else None


def dense_first(model) -> bool:
    """Whether a Keras model has a :func:`standardization_target`."""
    from deploykit.core.graph import graph_from_model

    return standardization_target(graph_from_model(model, unsafe=True)) is not None


def standardization_scales(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature of ``h`` (rows x features): the float standardization's mean and scale. A constant feature is
    only centred (scale 1); a near-constant one (a border pixel) is not blown up past 1 % of the typical std."""
    mean, std = h.mean(axis=0), h.std(axis=0)
    floor = 0.01 * float(np.median(std[std > 0])) if np.any(std > 0) else 1.0
    return mean, np.where(std > 0, np.maximum(std, floor), 1.0)


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
    """Per layer: (its input rows on the calibration data, the int8 scale of its input tensor); see
    :func:`~deploykit.export.int8_clip.layer_rows`."""
    from deploykit.backend import keras

    probe = keras.Model(model.inputs, [model.get_layer(spec.name).input for spec in specs])

    def inputs(part: np.ndarray) -> list[np.ndarray]:
        outputs = probe(part, training=False)
        return [np.asarray(h) for h in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]

    return layer_rows(specs, inputs, calibration, batch)


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
