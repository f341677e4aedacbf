"""The export vocabulary: formats, quantization variants and their knobs, tolerances, the export config.

One name per variant, used by the CLI, the API, the TOML, the file names and
the report: ``float32``, ``float16``, ``int8-dynamic`` (ONNX, onnxruntime
``quantize_dynamic``), ``int8-static`` (ONNX, calibrated QDQ), ``int8-full``
(TFLite full integer) and ``int8-weights`` (TFLite dynamic range). A variant
is a row of :data:`VARIANTS`: adding one is a member of :class:`Quantization`
plus its row (and a recipe in the exporter if it needs a new one).

Pure Python (no TensorFlow, onnx or onnxruntime): the CLI and the TOML
pipeline read it cheaply. Public functions accept the names and convert them
here, at the boundary.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from deploykit.configs import SEED_MAX, Config, boolean, choice, integer, names, number, text
from deploykit.core.task import Task
from deploykit.errors import ConfigError, UsageError
from deploykit.onnx.builder import MAX_OPSET, MIN_OPSET

log = logging.getLogger(__name__)

DEFAULT_NUM_CALIBRATION = 300


class ExportFormat(enum.Enum):
    ONNX = "onnx"
    TFLITE = "tflite"

    @property
    def suffix(self) -> str:
        return f".{self.value}"

    @property
    def runtime(self) -> str:
        """The runtime that loads and validates this format."""
        return {"onnx": "onnxruntime", "tflite": "litert"}[self.value]


class Precision(enum.Enum):
    """What a variant computes in; picks its default tolerance."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"


class Recipe(enum.Enum):
    """How an exporter produces a variant (the exporters dispatch on it)."""

    FLOAT = "float"
    FLOAT16 = "float16"
    ONNX_DYNAMIC = "onnx-dynamic"  # onnxruntime quantize_dynamic
    ONNX_STATIC = "onnx-static"  # onnxruntime quantize_static, QDQ
    TFLITE_FULL = "tflite-full"  # converter with a representative dataset, int8 builtins
    TFLITE_WEIGHTS = "tflite-weights"  # converter Optimize.DEFAULT without data: dynamic range


class Quantization(enum.Enum):
    """Every exported variant; the value is the name users type and the file name's suffix."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8_DYNAMIC = "int8-dynamic"
    INT8_STATIC = "int8-static"
    INT8_STATIC_PER_TENSOR = "int8-static-per-tensor"
    INT8_FULL = "int8-full"
    INT8_WEIGHTS = "int8-weights"

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self]

    @property
    def precision(self) -> Precision:
        return self.spec.precision

    @property
    def formats(self) -> tuple[ExportFormat, ...]:
        return self.spec.formats

    @property
    def needs_calibration(self) -> bool:
        return self.spec.calibrated

    def for_graph(self, convolutions: bool) -> Quantization:
        """The variant a graph gets for this one: :attr:`VariantSpec.with_convolutions` when it has convolutions."""
        return (self.spec.with_convolutions or self) if convolutions else self

    @property
    def file_suffix(self) -> str:
        """``model{suffix}.onnx``: empty for float32."""
        return "" if self is Quantization.FLOAT32 else f"_{self.value}"

    def file_name(self, fmt: ExportFormat) -> str:
        """The one naming rule: ``model.onnx``, ``model_float16.tflite``, ``model_int8-dynamic.onnx``..."""
        return f"model{self.file_suffix}{fmt.suffix}"


@dataclass(frozen=True)
class VariantSpec:
    """What a variant is: its precision, the formats it exists in, its recipe and the knobs it fixes."""

    precision: Precision
    formats: tuple[ExportFormat, ...]
    recipe: Recipe
    description: str
    calibrated: bool = False  # needs calibration data
    fixed: dict[str, Any] = field(default_factory=dict)  # QuantConfig fields this variant sets
    takes_exclude: bool = False  # QuantConfig.exclude applies (others ignore it, said in one log line)
    #: The variant shipped instead on a graph with convolutions (optimize tries it first, this one as its fallback).
    with_convolutions: Quantization | None = None


_ONNX, _TFLITE, _BOTH = (ExportFormat.ONNX,), (ExportFormat.TFLITE,), (ExportFormat.ONNX, ExportFormat.TFLITE)

#: The one table of variants.
VARIANTS = MappingProxyType(
    {
        Quantization.FLOAT32: VariantSpec(Precision.FLOAT32, _BOTH, Recipe.FLOAT, "float32, as converted"),
        Quantization.FLOAT16: VariantSpec(
            Precision.FLOAT16, _BOTH, Recipe.FLOAT16, "float16 weights; float32 input and output"
        ),
        Quantization.INT8_DYNAMIC: VariantSpec(
            Precision.INT8,
            _ONNX,
            Recipe.ONNX_DYNAMIC,
            "int8 weights, activations quantized at run time (onnxruntime quantize_dynamic); convolutions stay float32",
            takes_exclude=True,
            # its convolutions stay float (ConvInteger is 3-5x slower than float32), so on a convnet it is barely
            # smaller than float32: the calibrated QDQ variant quantizes them (QLinearConv after ort's QDQ fusion:
            # 2.3x smaller than int8-dynamic on the small CNN; faster than float32 only with int8 dot-product
            # instructions, AVX-512 VNNI / AVX-VNNI: about 0.9x on an AVX2-only CPU, benchmarks/results/faster.md)
            with_convolutions=Quantization.INT8_STATIC,
        ),
        Quantization.INT8_STATIC: VariantSpec(
            Precision.INT8,
            _ONNX,
            Recipe.ONNX_STATIC,
            "QDQ int8 weights and activations (uint8 activations where activation_type resolves so), calibrated "
            "(onnxruntime quantize_static)",
            calibrated=True,
            takes_exclude=True,
        ),
        Quantization.INT8_STATIC_PER_TENSOR: VariantSpec(
            Precision.INT8,
            _ONNX,
            Recipe.ONNX_STATIC,
            "int8-static with one weight scale per tensor (for runtimes without per-channel kernels)",
            calibrated=True,
            fixed={"per_channel": False},
            takes_exclude=True,
        ),
        Quantization.INT8_FULL: VariantSpec(
            Precision.INT8,
            _TFLITE,
            Recipe.TFLITE_FULL,
            "full-integer int8 kernels, calibrated on a representative dataset",
            calibrated=True,
            takes_exclude=True,
        ),
        Quantization.INT8_WEIGHTS: VariantSpec(
            Precision.INT8, _TFLITE, Recipe.TFLITE_WEIGHTS, "dynamic range: int8 weights, float activations"
        ),
    }
)

#: Names of earlier releases, refused with the name to use instead.
_RENAMED = {
    "none": "float32",
    "int8": "int8-dynamic or int8-static (ONNX), int8-full or int8-weights (TFLite)",
    "dynamic": "int8-dynamic (ONNX) or int8-weights (TFLite)",
    "full": "int8-full",
    "static": "int8-static",
}


class CalibrationMethod(enum.Enum):
    """How static int8 picks activation ranges (onnxruntime's CalibrationMethod)."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class ActivationType(enum.Enum):
    """The integer type of static int8 activations (onnxruntime's ``activation_type``; weights are always int8).

    ``auto`` resolves when a file is written: ``uint8`` on a CPU with int8 dot-product instructions (AVX-512 VNNI,
    AVX-VNNI, AMX: :mod:`deploykit.export.cpu`), where onnxruntime runs its u8 x s8 kernels and fuses the bias Add
    into ``QLinearAdd``, and s8 activations take a slower path (MobileNetV2 0.35, batch 256, 1 thread: 1.76x faster
    than float32 with uint8 activations, 1.14x with int8; ``benchmarks/results/int8_activations.md``);
    ``int8`` elsewhere, onnxruntime's S8S8 QDQ default, since AVX2's u8 x s8 instruction sums pairs into 16 bits and
    can saturate. Applies to ``int8-static`` ONNX; TFLite int8 is int8 throughout.
    """

    AUTO = "auto"
    INT8 = "int8"
    UINT8 = "uint8"

    def resolved(self) -> ActivationType:
        """``int8`` or ``uint8``: ``auto`` decided on this CPU."""
        if self is not ActivationType.AUTO:
            return self
        from deploykit.export.cpu import int8_dot_product

        return ActivationType.UINT8 if int8_dot_product() else ActivationType.INT8


def parse_enum(kind: type[enum.Enum], value: Any, what: str, error: type[Exception] = UsageError):
    """``value`` as a member of ``kind`` (the kit's :func:`choice`), raised as ``error``; an old name gets its
    new one."""
    if kind is Quantization and value is None:
        return Quantization.FLOAT32
    if kind is Quantization and isinstance(value, str) and value.strip().lower() in _RENAMED:
        raise error(f"{what} {value!r} was renamed: use {_RENAMED[value.strip().lower()]}")
    try:
        return choice(kind, what, value)
    except ConfigError as exc:
        raise error(str(exc)) from None


def parse_list(kind: type[enum.Enum], value: Any, what: str, error: type[Exception] = UsageError) -> tuple:
    """A comma-separated string or a list of names -> a tuple of distinct members, in order."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    members = []
    for item in items:
        member = parse_enum(kind, item.strip() if isinstance(item, str) else item, what, error)
        if member not in members:
            members.append(member)
    if not members:
        raise error(f"no {what} given")
    return tuple(members)


@dataclass(frozen=True)
class QuantConfig(Config):
    """The knobs of int8 quantization, named as onnxruntime's quantizers name them; validated on construction.

    ``exclude`` keeps nodes in float: an ONNX node name, or a Keras layer name
    (every node converted from that layer). A variant may fix some knobs
    (:attr:`VariantSpec.fixed`); :meth:`for_variant` applies them.
    """

    per_channel: bool = True  # weights: one scale per output channel (False: one per tensor)
    calibration_method: CalibrationMethod = CalibrationMethod.MINMAX  # static int8 activation ranges
    activation_type: ActivationType = ActivationType.AUTO  # static int8 activations (ONNX): see ActivationType
    num_calibration: int = DEFAULT_NUM_CALIBRATION  # training samples drawn to calibrate
    exclude: tuple[str, ...] = ()  # nodes or layers left in float
    int8_io: bool = False  # int8-full TFLite: int8 input and output tensors
    seed: int = 42  # draws the calibration samples
    fold: bool = True  # fold BatchNorm and the input standardization into the kernels first (optimize --no-fold: false)
    standardize_input: bool = False  # a float standardization in front of the first Dense layer (raw tabular features)
    standardize_exact: bool = False  # its constants as measured, not on the coarse grid (the fallback when that misses)

    def __post_init__(self) -> None:
        boolean("per_channel", self.per_channel)
        boolean("int8_io", self.int8_io)
        boolean("fold", self.fold)
        boolean("standardize_input", self.standardize_input)
        boolean("standardize_exact", self.standardize_exact)
        object.__setattr__(
            self, "calibration_method", choice(CalibrationMethod, "calibration_method", self.calibration_method)
        )
        object.__setattr__(self, "activation_type", choice(ActivationType, "activation_type", self.activation_type))
        integer("num_calibration", self.num_calibration, 1)
        integer("seed", self.seed, 0, SEED_MAX)
        object.__setattr__(self, "exclude", names("exclude", self.exclude, split=True))

    def for_variant(self, quantization: Quantization) -> QuantConfig:
        """These knobs with the ones ``quantization`` fixes applied; ``exclude`` dropped, with one log line, by a
        variant that does not take it (float32, float16, TFLite int8-weights: nothing of theirs is quantized per
        node)."""
        knobs = dataclasses.replace(self, **quantization.spec.fixed) if quantization.spec.fixed else self
        if knobs.exclude and not quantization.spec.takes_exclude:
            log.info(
                "exclude (%s) applies to %s; %s ignores it",
                ", ".join(knobs.exclude),
                ", ".join(q.value for q in Quantization if q.spec.takes_exclude),
                quantization.value,
            )
            knobs = dataclasses.replace(knobs, exclude=())
        return knobs


class InstanceKind(enum.Enum):
    """Where Triton runs a model's instances."""

    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class TritonConfig(Config):
    """How the Triton repository serves each model (batching, instance groups) and the KServe manifest's fields."""

    max_batch_size: int = 256
    instance_kind: InstanceKind = InstanceKind.CPU
    instances: int = 1  # model instances per device
    max_queue_delay_us: int = 100  # dynamic batching: how long a request may wait for others
    service_name: str = "deploykit"  # the KServe InferenceService's name
    storage_uri: str = "${STORAGE_URI}"  # where the repository is uploaded; by default a parameter of kserve.yaml

    def __post_init__(self) -> None:
        integer("max_batch_size", self.max_batch_size, 1)
        text("service_name", self.service_name)
        text("storage_uri", self.storage_uri)
        object.__setattr__(self, "instance_kind", choice(InstanceKind, "instance_kind", self.instance_kind))
        integer("instances", self.instances, 1)
        integer("max_queue_delay_us", self.max_queue_delay_us, 0)


def as_triton(value: Any) -> TritonConfig | None:
    """``triton`` as TOML and callers give it: true / false / a table / a TritonConfig / None."""
    if value is None or value is False:
        return None
    if value is True:
        return TritonConfig()
    if isinstance(value, dict):
        return TritonConfig.from_dict(value)
    if isinstance(value, TritonConfig):
        return value
    raise ConfigError(f"triton must be true, false or a table of options, got {value!r}")


def as_quant_config(value: Any) -> QuantConfig:
    if value is None:
        return QuantConfig()
    if isinstance(value, dict):
        return QuantConfig.from_dict(value)
    if isinstance(value, QuantConfig):
        return value
    raise ConfigError(f"quantization must be a table of options, got {value!r}")


def check_variants(formats: tuple[ExportFormat, ...], quantize: tuple[Quantization, ...]) -> None:
    """Every requested variant must exist in at least one requested format."""
    for q in quantize:
        if not set(q.formats) & set(formats):
            needs = " or ".join(f.value for f in q.formats)
            raise ConfigError(f"quantize {q.value!r} exists only in {needs}; add {needs} to formats")


def legacy_quantize(precisions: Any, onnx_int8: Any = "dynamic", tflite_int8: Any = "full") -> tuple[Quantization, ...]:
    """The variants an earlier ``[export] precisions / onnx_int8 / tflite_int8`` asked for (with a FutureWarning)."""
    warnings.warn(
        "[export] precisions / onnx_int8 / tflite_int8 are deprecated: use quantize = [...] with "
        + ", ".join(repr(q.value) for q in Quantization),
        FutureWarning,
        stacklevel=3,
    )
    names = [p.strip() for p in precisions.split(",")] if isinstance(precisions, str) else precisions
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"precisions must be a list, got {precisions!r}")
    onnx = {"dynamic": Quantization.INT8_DYNAMIC, "static": Quantization.INT8_STATIC}
    tflite = {"full": Quantization.INT8_FULL, "dynamic": Quantization.INT8_WEIGHTS}
    for what, value, table in (("onnx_int8", onnx_int8, onnx), ("tflite_int8", tflite_int8, tflite)):
        if getattr(value, "value", value) not in table:
            raise ConfigError(f"{what} must be one of {', '.join(map(repr, table))}, got {value!r}")
    out: list[Quantization] = []
    for name in names:
        name = getattr(name, "value", name)
        if name == "int8":
            out += [onnx[getattr(onnx_int8, "value", onnx_int8)], tflite[getattr(tflite_int8, "value", tflite_int8)]]
        elif name in ("float32", "float16"):
            out.append(Quantization(name))
        else:
            raise ConfigError(f"precisions must list 'float32', 'float16' or 'int8', got {name!r}")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Tolerance(Config):
    """What an artifact must reach against its reference; an unset bound is not checked."""

    max_abs_diff: float | None = None  # largest |output_artifact - output_reference| (probabilities or predictions)
    min_agreement: float | None = None  # fraction of test inputs whose predicted class matches the reference
    max_accuracy_drop: float | None = None  # reference accuracy - artifact accuracy (0.01 = one point)
    max_rel_diff: float | None = None  # regressors: largest |p - r| / max(|r|, RMS of r) against the reference
    max_rmse_increase: float | None = None  # regressors: test RMSE at most (1 + this) x the reference's (0.05 = 5%)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_abs_diff", number("max_abs_diff", self.max_abs_diff, 0.0, optional=True))
        object.__setattr__(self, "min_agreement", number("min_agreement", self.min_agreement, 0.0, 1.0, optional=True))
        object.__setattr__(
            self, "max_accuracy_drop", number("max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0, optional=True)
        )
        object.__setattr__(self, "max_rel_diff", number("max_rel_diff", self.max_rel_diff, 0.0, optional=True))
        object.__setattr__(
            self, "max_rmse_increase", number("max_rmse_increase", self.max_rmse_increase, 0.0, optional=True)
        )

    @classmethod
    def for_precision(cls, precision: Precision, task: Task | None = None) -> Tolerance:
        """The default per variant and task (``deploykit.core.task.Task``; None: a classifier).

        Classifiers: float32 max diff <= 1e-4; float16 agreement >= 99.5%; int8 within 1 point.
        Regressors, whose outputs have the targets' units (so an absolute bound means nothing): float32
        relative diff <= 1e-4; float16 relative diff <= 1e-2 (float16 keeps about 3 digits); int8 test RMSE
        at most 5% above the Keras model's.
        """
        precision = choice(Precision, "precision", precision)
        if task is Task.REGRESSION:
            return _REGRESSION_TOLERANCES[precision]
        return _DEFAULT_TOLERANCES[precision]

    def overridden(self, other: Tolerance | None) -> Tolerance:
        """A copy with ``other``'s set bounds replacing these."""
        if other is None:
            return self
        return dataclasses.replace(self, **{k: v for k, v in vars(other).items() if v is not None})

    def describe(self) -> str:
        parts = []
        if self.max_abs_diff is not None:
            parts.append(f"max diff <= {self.max_abs_diff:g}")
        if self.min_agreement is not None:
            parts.append(f"agreement >= {self.min_agreement:.2%}")
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {100 * self.max_accuracy_drop:g} pt")
        if self.max_rel_diff is not None:
            parts.append(f"relative diff <= {self.max_rel_diff:g}")
        if self.max_rmse_increase is not None:
            parts.append(f"RMSE increase <= {100 * self.max_rmse_increase:g}%")
        return ", ".join(parts) or "none"


_DEFAULT_TOLERANCES = {
    Precision.FLOAT32: Tolerance(max_abs_diff=1e-4),
    Precision.FLOAT16: Tolerance(min_agreement=0.995),
    Precision.INT8: Tolerance(max_accuracy_drop=0.01),
}
_REGRESSION_TOLERANCES = {
    Precision.FLOAT32: Tolerance(max_rel_diff=1e-4),
    Precision.FLOAT16: Tolerance(max_rel_diff=1e-2),
    Precision.INT8: Tolerance(max_rmse_increase=0.05),
}


@dataclass(frozen=True)
class ExportConfig(Config):
    """Which artifacts ``export_bundle`` writes and how it checks them; validated on construction.

    ``formats`` and ``quantize`` accept names or comma-separated strings; every
    quantization is written in each requested format it exists in.
    ``quantization`` holds the int8 knobs; ``triton`` (true or a table) adds a
    Triton repository and a KServe manifest; ``tolerance`` overrides the
    per-variant defaults for the bounds it sets.
    """

    formats: tuple[ExportFormat, ...] = (ExportFormat.ONNX, ExportFormat.TFLITE)
    quantize: tuple[Quantization, ...] = (Quantization.FLOAT32,)
    opset: int = 17
    quantization: QuantConfig = field(default_factory=QuantConfig)
    triton: TritonConfig | None = None
    repeats: int = 50  # timed runs per batch size (the median is reported)
    tolerance: Tolerance | None = None

    def __post_init__(self) -> None:
        _set = object.__setattr__
        _set(self, "formats", parse_list(ExportFormat, self.formats, "format", ConfigError))
        _set(self, "quantize", parse_list(Quantization, self.quantize, "quantization", ConfigError))
        check_variants(self.formats, self.quantize)
        integer("opset", self.opset, MIN_OPSET, MAX_OPSET)
        integer("repeats", self.repeats, 1)
        _set(self, "quantization", as_quant_config(self.quantization))
        _set(self, "triton", as_triton(self.triton))
        if isinstance(self.tolerance, dict):
            _set(self, "tolerance", Tolerance.from_dict(self.tolerance))
        if self.tolerance is not None and not isinstance(self.tolerance, Tolerance):
            raise ConfigError(f"tolerance must be a table of bounds, got {self.tolerance!r}")
        if self.triton and ExportFormat.ONNX not in self.formats:
            raise ConfigError("triton needs the onnx format (Triton serves the ONNX artifacts)")

    def variants(self) -> list[tuple[ExportFormat, Quantization]]:
        """Every (format, quantization) to write, formats first."""
        return [(fmt, q) for fmt in self.formats for q in self.quantize if fmt in q.formats]

    def tolerance_for(self, precision: Precision, task: Task | None = None) -> Tolerance:
        return Tolerance.for_precision(precision, task).overridden(self.tolerance)
