"""Typed options of the export step: formats, quantizations, tolerances, and the whole export config.

Pure Python (no TensorFlow, onnx or onnxruntime): the CLI and the TOML
pipeline read it cheaply. Public functions accept the documented strings
(``quantization="float16"``) and convert them here, at the boundary.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

from deploykit.configs import Config
from deploykit.errors import ConfigError, UsageError

#: Opsets tf2onnx 1.17 converts to and onnxruntime runs.
MIN_OPSET, MAX_OPSET = 13, 18
DEFAULT_NUM_CALIBRATION = 300


class ExportFormat(enum.Enum):
    ONNX = "onnx"
    TFLITE = "tflite"

    @property
    def suffix(self) -> str:
        return f".{self.value}"


class Precision(enum.Enum):
    """What a variant computes in; picks its default tolerance."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"


class OnnxQuantization(enum.Enum):
    NONE = "none"
    FLOAT16 = "float16"  # float16 weights and arithmetic, float32 input and output
    INT8_DYNAMIC = "int8-dynamic"  # int8 weights, activations quantized at run time
    INT8_STATIC = "int8-static"  # QDQ int8 weights and activations, calibrated on training data

    @property
    def precision(self) -> Precision:
        return _PRECISION[self.value]

    @property
    def needs_calibration(self) -> bool:
        return self is OnnxQuantization.INT8_STATIC


class TfliteQuantization(enum.Enum):
    NONE = "none"
    FLOAT16 = "float16"  # float16 weights
    DYNAMIC = "dynamic"  # dynamic-range: int8 weights, float activations
    INT8 = "int8"  # full-integer: int8 weights and activations, calibrated on a representative dataset

    @property
    def precision(self) -> Precision:
        return _PRECISION[self.value]

    @property
    def needs_calibration(self) -> bool:
        return self is TfliteQuantization.INT8


_PRECISION = {
    "none": Precision.FLOAT32,
    "float16": Precision.FLOAT16,
    "int8-dynamic": Precision.INT8,
    "int8-static": Precision.INT8,
    "dynamic": Precision.INT8,
    "int8": Precision.INT8,
}


class QuantizeOption(enum.Enum):
    """What a user asks for across formats (``--quantize none,float16,int8,dynamic``)."""

    NONE = "none"
    FLOAT16 = "float16"
    INT8 = "int8"  # full-integer TFLite, static QDQ ONNX
    DYNAMIC = "dynamic"  # dynamic-range TFLite, dynamic int8 ONNX

    def for_format(self, fmt: ExportFormat) -> OnnxQuantization | TfliteQuantization:
        return _PER_FORMAT[fmt][self]

    @property
    def file_suffix(self) -> str:
        """``model{suffix}.onnx``: empty for float32."""
        return "" if self is QuantizeOption.NONE else f"_{self.value}"


_PER_FORMAT = {
    ExportFormat.ONNX: {
        QuantizeOption.NONE: OnnxQuantization.NONE,
        QuantizeOption.FLOAT16: OnnxQuantization.FLOAT16,
        QuantizeOption.INT8: OnnxQuantization.INT8_STATIC,
        QuantizeOption.DYNAMIC: OnnxQuantization.INT8_DYNAMIC,
    },
    ExportFormat.TFLITE: {
        QuantizeOption.NONE: TfliteQuantization.NONE,
        QuantizeOption.FLOAT16: TfliteQuantization.FLOAT16,
        QuantizeOption.INT8: TfliteQuantization.INT8,
        QuantizeOption.DYNAMIC: TfliteQuantization.DYNAMIC,
    },
}

#: The ONNX names are accepted as aliases of the cross-format options.
_OPTION_ALIASES = {"int8-static": QuantizeOption.INT8, "int8-dynamic": QuantizeOption.DYNAMIC, "float32": QuantizeOption.NONE}


def parse_enum(kind: type[enum.Enum], value: Any, what: str, error: type[Exception] = UsageError):
    """``value`` as a member of ``kind`` (None means ``"none"`` where that exists); else one clear error."""
    if isinstance(value, kind):
        return value
    if value is None and "none" in kind._value2member_map_:
        return kind("none")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in kind._value2member_map_:
            return kind(text)
        if kind is QuantizeOption and text in _OPTION_ALIASES:
            return _OPTION_ALIASES[text]
    choices = ", ".join(repr(m.value) for m in kind)
    raise error(f"unknown {what} {value!r}; choose from {choices}")


def parse_list(kind: type[enum.Enum], value: Any, what: str, error: type[Exception] = UsageError) -> tuple:
    """A comma-separated string or a list of names -> a tuple of distinct members, in order."""
    items = [p for p in value.split(",")] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    members = []
    for item in items:
        member = parse_enum(kind, item.strip() if isinstance(item, str) else item, what, error)
        if member not in members:
            members.append(member)
    if not members:
        raise error(f"no {what} given")
    return tuple(members)


def _optional_number(name: str, value: Any, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}] or unset, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")
    return value


@dataclass(frozen=True)
class Tolerance(Config):
    """What an artifact must reach against its reference; an unset bound is not checked."""

    max_abs_diff: float | None = None  # largest |p_artifact - p_reference| over the test probabilities
    min_agreement: float | None = None  # fraction of test inputs whose predicted class matches the reference
    max_accuracy_drop: float | None = None  # reference accuracy - artifact accuracy (0.01 = one point)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_abs_diff", _optional_number("max_abs_diff", self.max_abs_diff, 0.0, math.inf))
        object.__setattr__(self, "min_agreement", _optional_number("min_agreement", self.min_agreement, 0.0, 1.0))
        object.__setattr__(self, "max_accuracy_drop", _optional_number("max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0))

    @classmethod
    def for_precision(cls, precision: Precision) -> Tolerance:
        """The default per variant: float32 max diff <= 1e-4; float16 agreement >= 99.5%; int8 within 1 point."""
        return _DEFAULT_TOLERANCES[parse_enum(Precision, precision, "precision", ConfigError)]

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
        return ", ".join(parts) or "none"


_DEFAULT_TOLERANCES = {
    Precision.FLOAT32: Tolerance(max_abs_diff=1e-4),
    Precision.FLOAT16: Tolerance(min_agreement=0.995),
    Precision.INT8: Tolerance(max_accuracy_drop=0.01),
}


@dataclass(frozen=True)
class ExportConfig(Config):
    """Which artifacts ``export_bundle`` writes and how it checks them; validated on construction.

    ``formats`` and ``quantize`` accept names or comma-separated strings;
    ``tolerance`` overrides the per-variant defaults for the bounds it sets.
    """

    formats: tuple[ExportFormat, ...] = (ExportFormat.ONNX, ExportFormat.TFLITE)
    quantize: tuple[QuantizeOption, ...] = (QuantizeOption.NONE,)
    opset: int = 17
    num_calibration: int = DEFAULT_NUM_CALIBRATION  # training samples for int8 calibration
    int8_io: bool = False  # full-integer TFLite: int8 input and output tensors
    triton: bool = False  # also write a Triton / KServe model repository of the ONNX artifacts
    max_batch_size: int = 256  # Triton's max_batch_size
    repeats: int = 50  # timed runs per batch size (the median is reported)
    tolerance: Tolerance | None = None
    seed: int = 42  # draws the calibration samples

    def __post_init__(self) -> None:
        _set = object.__setattr__
        _set(self, "formats", parse_list(ExportFormat, self.formats, "format", ConfigError))
        _set(self, "quantize", parse_list(QuantizeOption, self.quantize, "quantization", ConfigError))
        _integer("opset", self.opset, MIN_OPSET, MAX_OPSET)
        _integer("num_calibration", self.num_calibration, 1)
        _integer("max_batch_size", self.max_batch_size, 1)
        _integer("repeats", self.repeats, 1)
        _integer("seed", self.seed, 0)
        for name in ("int8_io", "triton"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.tolerance, dict):
            _set(self, "tolerance", Tolerance.from_dict(self.tolerance))
        if self.tolerance is not None and not isinstance(self.tolerance, Tolerance):
            raise ConfigError(f"tolerance must be a table of bounds, got {self.tolerance!r}")
        if self.triton and ExportFormat.ONNX not in self.formats:
            raise ConfigError("triton needs the onnx format (Triton serves the ONNX artifact)")

    def variants(self) -> list[tuple[ExportFormat, QuantizeOption]]:
        """Every (format, option) to write, formats first."""
        return [(fmt, q) for fmt in self.formats for q in self.quantize]

    def tolerance_for(self, precision: Precision) -> Tolerance:
        return Tolerance.for_precision(precision).overridden(self.tolerance)
