"""The optimize pipeline's configuration: one frozen dataclass per step, read from and written to TOML.

A TOML file has one table per step (every key optional)::

    [input]                  # what the run reads (written by the CLI so the run can be repeated)
    model = "models/digits_default.keras"
    data = "digits"
    ood_data = "ood.npz"     # optional: out-of-distribution inputs for the MC report
    task = "regression"      # optional: classification | regression (default: read off the labels and the model)
    [fold]
    enabled = true
    [sparsity]
    method = "prune"         # prune | l1 | none
    [sparsity.search]        # deploykit.sparsity.SearchConfig: the highest target within the budget
    targets = [0.95, 0.9, 0.8, 0.7, 0.5]
    [sparsity.prune]         # deploykit.sparsity.PruneConfig (target_sparsity: without the search)
    target_sparsity = 0.8
    distill = true
    [sparsity.l1]            # deploykit.sparsity.L1Config
    l1 = 0.001
    [compact]
    enabled = true
    [export]
    formats = ["onnx", "tflite"]
    quantize = ["float32", "float16", "int8-dynamic", "int8-full"]
    [mc]
    enabled = true
    samples = 30
    temperature = true       # fit T on the validation split, store it in the MC graph
    target_accuracy = 0.99   # optional: an `abstain` output (or target_coverage; not both)
    [ensemble]               # optional: a deep ensemble of this model and others (deploykit ensemble, in the run)
    members = ["m2.keras", "m3.keras"]
    [validate]
    enabled = true
    max_accuracy_drop = 0.01 # the accuracy budget of a classifier, vs the original model on the test split
    max_rmse_increase = 0.05 # a regressor's budget: test RMSE at most 5% above the original model's

Unknown keys are a ConfigError naming the key and the keys allowed there.
This module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.contract import MaskKind
from deploykit.configs import boolean, check_keys, choice, fraction, integer, number, positive, text
from deploykit.errors import ConfigError
from deploykit.export.config import (
    ExportFormat,
    QuantConfig,
    Quantization,
    TritonConfig,
    as_quant_config,
    as_triton,
    check_variants,
    legacy_quantize,
    parse_list,
)
from deploykit.records import to_jsonable
from deploykit.task import Task
from deploykit.sparsity.config import L1Config, PruneConfig, SearchConfig

if TYPE_CHECKING:
    from deploykit.export.config import Tolerance

#: Fine-tuning epochs of each sparsity try: 30 recover 80% pruning of the shipped model to within half a point
#: on digits (8 lose 2 points); past the first (traced) epoch each costs a fraction of a second.
DEFAULT_TUNE_EPOCHS = 30
#: The pipeline's artifacts: every format at float32 and float16, dynamic int8 ONNX, full-integer int8 TFLite.
DEFAULT_QUANTIZE = (Quantization.FLOAT32, Quantization.FLOAT16, Quantization.INT8_DYNAMIC, Quantization.INT8_FULL)
#: The accuracy budget: test accuracy may fall at most this much below the original model's (one point).
DEFAULT_MAX_ACCURACY_DROP = 0.01
#: A regressor's budget: test RMSE may rise at most this fraction above the original model's (5%): a fraction,
#: since an RMSE has the targets' units; 5% is about what a point of accuracy is to a classifier near 90-98%
#: (a tenth to a fifth of its error rate), and what int8 costs a small MLP.
DEFAULT_MAX_RMSE_INCREASE = 0.05


class SparsityMethod(enum.Enum):
    PRUNE = "prune"  # TF-MOT magnitude pruning to a target sparsity
    L1 = "l1"  # l1 fine-tuning, then zero the small weights
    NONE = "none"


class _Table:
    """from_dict / to_dict for the flat step tables (enums and tuples as TOML values)."""

    @classmethod
    def from_dict(cls, values: Any, where: str | None = None):
        return cls(**check_keys(cls, values, f"[{where or cls.TABLE}]"))  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in to_jsonable(self).items() if v is not None}


@dataclass(frozen=True)
class InputConfig(_Table):
    """The model and data of the run (None: given to ``optimize`` as objects, or the CLI's defaults)."""

    TABLE = "input"
    model: str | None = None
    data: str = "digits"
    label_column: str = "label"
    seed: int = 42  # seed of the data split
    ood_data: str | None = None  # out-of-distribution inputs for the MC report (.npy, or .npz with x)
    class_names: tuple[str, ...] | None = None  # the classes in the model's output order (None: the data's own)
    task: Task | None = None  # classification | regression (None: read off the labels and the model)

    def __post_init__(self) -> None:
        if self.task is not None:
            object.__setattr__(self, "task", choice(Task, "input.task", self.task))
        if self.class_names is not None:
            from deploykit.data import check_class_names

            object.__setattr__(self, "class_names", check_class_names("input.class_names", self.class_names))
        for name in ("model", "ood_data"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"input.{name} must be a path, got {getattr(self, name)!r}")
        text("input.data", self.data)
        text("input.label_column", self.label_column)
        integer("input.seed", self.seed, 0)


@dataclass(frozen=True)
class FoldStep(_Table):
    """Fold BatchNormalization and the input standardization into the Dense layers."""

    TABLE = "fold"
    enabled: bool = True

    def __post_init__(self) -> None:
        boolean("fold.enabled", self.enabled)


def _tune_defaults(cls):
    """The pipeline's fine-tuning: distilled from the original model (it is at hand, and it regularizes)."""
    return cls(epochs=DEFAULT_TUNE_EPOCHS, distill=True)


@dataclass(frozen=True)
class SparsityStep:
    """Prune (TF-MOT) or l1-sparsify the Dense kernels; ``prune`` / ``l1`` / ``search`` are the sparsity module's configs.

    With ``method = "prune"`` and ``search.enabled``, the targets of ``search`` are tried from the
    highest down and the first within the accuracy budget is kept (``prune.target_sparsity`` is
    then unused); without the search, ``prune.target_sparsity`` is the one try.
    """

    TABLE = "sparsity"
    method: SparsityMethod = SparsityMethod.PRUNE
    prune: PruneConfig = field(default_factory=lambda: _tune_defaults(PruneConfig))
    l1: L1Config = field(default_factory=lambda: _tune_defaults(L1Config))
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", choice(SparsityMethod, "sparsity.method", self.method))
        for name, cls in (("prune", PruneConfig), ("l1", L1Config), ("search", SearchConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"sparsity.{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
            if getattr(getattr(self, name), "compact", False):
                raise ConfigError(f"sparsity.{name}.compact: the pipeline compacts in its own step; use [compact] enabled")

    @property
    def enabled(self) -> bool:
        return self.method is not SparsityMethod.NONE

    @classmethod
    def from_dict(cls, values: Any, where: str = "sparsity") -> SparsityStep:
        values = check_keys(cls, values, f"[{where}]")
        for name, sub in (("prune", PruneConfig), ("l1", L1Config)):
            if name in values:
                table = check_keys(sub, values[name], f"[{where}.{name}]")
                values[name] = sub.from_dict({**_tune_defaults(sub).to_dict(), **table})
        if "search" in values:
            values["search"] = SearchConfig.from_dict(check_keys(SearchConfig, values["search"], f"[{where}.search]"))
        return cls(**values)

    @property
    def searching(self) -> bool:
        return self.method is SparsityMethod.PRUNE and self.search.enabled

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method.value, "prune": self.prune.to_dict(), "l1": self.l1.to_dict(),
                "search": self.search.to_dict()}


@dataclass(frozen=True)
class CompactStep(_Table):
    """Remove the hidden neurons sparsity left dead (exact)."""

    TABLE = "compact"
    enabled: bool = True
    tolerance: float = 1e-5  # outputs before and after must agree this closely on the test split (x their RMS when > 1)

    def __post_init__(self) -> None:
        boolean("compact.enabled", self.enabled)
        object.__setattr__(self, "tolerance", positive("compact.tolerance", self.tolerance))


@dataclass(frozen=True)
class ExportStep(_Table):
    """Export every format x quantization with the exporter's own vocabulary (``deploykit.export``).

    Each artifact is validated in its runtime (see [validate]). ``quantize`` lists
    variants (float32, float16, int8-dynamic, int8-static, int8-full,
    int8-weights), each written in the requested formats it exists in;
    ``[export.quantization]`` holds the int8 knobs (a ``QuantConfig``) and
    ``triton`` is true or a table (a ``TritonConfig``). The earlier keys
    ``precisions`` / ``onnx_int8`` / ``tflite_int8`` / ``calibration_samples``
    are still read, with a deprecation warning.
    """

    TABLE = "export"
    enabled: bool = True
    formats: tuple[ExportFormat, ...] = (ExportFormat.ONNX, ExportFormat.TFLITE)
    quantize: tuple[Quantization, ...] = DEFAULT_QUANTIZE
    quantization: QuantConfig = field(default_factory=QuantConfig)
    opset: int = 17
    triton: TritonConfig | None = None  # also write a Triton repository of every ONNX model and a KServe manifest
    temperature: bool = True  # fit T on the validation split and store it in each shipped ONNX model

    def __post_init__(self) -> None:
        boolean("export.enabled", self.enabled)
        boolean("export.temperature", self.temperature)
        for name, kind in (("formats", ExportFormat), ("quantize", Quantization)):
            values = parse_list(kind, getattr(self, name), f"export.{name}", ConfigError)
            if isinstance(getattr(self, name), (list, tuple)) and len(values) != len(getattr(self, name)):
                raise ConfigError(f"export.{name} lists a value twice: {list(getattr(self, name))}")
            object.__setattr__(self, name, values)
        _prefixed("export", check_variants, self.formats, self.quantize)
        if isinstance(self.quantization, dict):
            check_keys(QuantConfig, self.quantization, "[export.quantization]")
        if isinstance(self.triton, dict):
            check_keys(TritonConfig, self.triton, "[export.triton]")
        object.__setattr__(self, "quantization", _prefixed("export.quantization", as_quant_config, self.quantization))
        object.__setattr__(self, "triton", _prefixed("export.triton", as_triton, self.triton))
        integer("export.opset", self.opset, 13)

    @classmethod
    def from_dict(cls, values: Any, where: str = "export") -> ExportStep:
        values = dict(values) if isinstance(values, dict) else values
        if isinstance(values, dict) and _LEGACY_KEYS & set(values):
            values = _legacy_export(values)
        if isinstance(values, dict) and "formats" in values and "quantize" not in values:
            values["quantize"] = _in_formats(DEFAULT_QUANTIZE, values["formats"])
        return cls(**check_keys(cls, values, f"[{where}]"))

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        values["triton"] = values.get("triton") or False
        return values

    def variants(self) -> list[tuple[ExportFormat, Quantization]]:
        return [(f, q) for f in self.formats for q in self.quantize if f in q.formats] if self.enabled else []


_LEGACY_KEYS = {"precisions", "onnx_int8", "tflite_int8", "calibration_samples"}


def _prefixed(where: str, fn, *args):
    """``fn(*args)`` with a ConfigError's message prefixed by the TOML table it concerns."""
    try:
        return fn(*args)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _in_formats(quantize: tuple[Quantization, ...], formats: Any) -> tuple[Quantization, ...]:
    """The variants of ``quantize`` that exist in at least one of ``formats``."""
    formats = set(parse_list(ExportFormat, formats, "export.formats", ConfigError))
    return tuple(q for q in quantize if set(q.formats) & formats)


def _legacy_export(values: dict[str, Any]) -> dict[str, Any]:
    """An earlier [export] table (precisions, onnx_int8, tflite_int8, calibration_samples) in today's keys."""
    if "quantize" in values and "precisions" in values:
        raise ConfigError("export: give quantize or the deprecated precisions, not both")
    legacy = {k: values.pop(k) for k in list(values) if k in _LEGACY_KEYS}
    if "precisions" in legacy or "onnx_int8" in legacy or "tflite_int8" in legacy:
        try:
            quantize = legacy_quantize(legacy.get("precisions", ["float32", "float16", "int8"]),
                                       legacy.get("onnx_int8", "dynamic"), legacy.get("tflite_int8", "full"))
            values["quantize"] = _in_formats(quantize, values.get("formats", ["onnx", "tflite"]))
        except ConfigError as exc:  # legacy_quantize names the key: precisions, onnx_int8...
            raise ConfigError(f"export.{exc}") from None
    if "calibration_samples" in legacy:
        table = values.get("quantization") or {}
        values["quantization"] = {**(table.to_dict() if isinstance(table, QuantConfig) else table),
                                  "num_calibration": legacy["calibration_samples"]}
    return values


@dataclass(frozen=True)
class MCStep(_Table):
    """The MC Dropout ONNX model (skipped, with the reason, when the model has no dropout).

    ``temperature``: fit a temperature on the validation split and store it in the graph.
    ``target_accuracy`` / ``target_coverage`` (at most one, in (0, 1]): add an ``abstain`` output whose
    predictive-entropy threshold reaches it on the validation split (see deploykit.uncertainty.selective).
    A regressor's threshold is on the 95% interval width: ``target_coverage``, or ``target_rmse`` (the kept
    rows' RMSE at most this, in the targets' units).
    """

    TABLE = "mc"
    enabled: bool = True
    samples: int = 30
    seed: int | None = None  # None: fresh draws per session; an int: repeatable outputs
    temperature: bool = True
    target_accuracy: float | None = None
    target_coverage: float | None = None
    target_rmse: float | None = None
    mask: MaskKind = MaskKind.AUTO  # how each dropout mask is drawn (deploykit.uncertainty.masks.resolve_mask)

    def __post_init__(self) -> None:
        boolean("mc.enabled", self.enabled)
        object.__setattr__(self, "mask", choice(MaskKind, "mc.mask", self.mask))
        boolean("mc.temperature", self.temperature)
        integer("mc.samples", self.samples, 1)
        integer("mc.seed", self.seed, 0, optional=True)
        given = [n for n in _TARGETS if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"mc.{given[0]} and mc.{given[1]} contradict each other: give one")
        for name in ("target_accuracy", "target_coverage"):
            number(f"mc.{name}", getattr(self, name), 0, 1, optional=True, open_low=True)
        number("mc.target_rmse", self.target_rmse, 0, optional=True, open_low=True)

    def selective_target(self):
        """The SelectiveTarget these fields ask for (None: no abstain output)."""
        if all(getattr(self, n) is None for n in _TARGETS):
            return None
        from deploykit.uncertainty.selective import SelectiveTarget

        return SelectiveTarget(**{n: getattr(self, n) for n in _TARGETS})


#: The selective targets of the MC step: at most one is given.
_TARGETS = ("target_accuracy", "target_coverage", "target_rmse")


@dataclass(frozen=True)
class EnsembleStep(_Table):
    """A deep ensemble beside the run's artifacts (``deploykit ensemble`` inside the run): the run's model and the
    model files in ``members`` (the same inputs and task), each through this pipeline's own sparsity and int8-dynamic
    ONNX export within the budget, as one ONNX model ``ensemble/ensemble.onnx``. It is calibrated, given the
    ``abstain`` threshold and evaluated on the OOD data as the MC model is ([mc] temperature and targets,
    [input] ood_data). ``mc_samples``: MC Dropout inside each member (T samples each). No members: no ensemble.
    """

    TABLE = "ensemble"
    members: tuple[str, ...] = ()
    mc_samples: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.members, (list, tuple)) or not all(isinstance(m, str) and m for m in self.members):
            raise ConfigError(f"ensemble.members must be a list of model file paths, got {self.members!r}")
        object.__setattr__(self, "members", tuple(self.members))
        integer("ensemble.mc_samples", self.mc_samples, 1, optional=True)

    @property
    def enabled(self) -> bool:
        return bool(self.members)


@dataclass(frozen=True)
class ValidateStep(_Table):
    """The accuracy budget and the checks of each artifact.

    ``max_accuracy_drop`` (the budget) governs every step and artifact: test accuracy at most this
    far below the original model's. A regressor's budget is ``max_rmse_increase`` instead: test RMSE at
    most this fraction above the original's (its artifacts' own bounds are relative to the Keras model's
    outputs, see :meth:`Tolerance.for_precision`). The sparsity search keeps the highest target within it; an
    artifact outside it, or outside the exporter's per-precision tolerance against the Keras model
    it came from (float32: max diff <= 1e-4; float16: agreement >= 99.5%), is rejected: reported
    with its numbers and not shipped. ``artifacts`` overrides the per-precision bounds (a
    ``deploykit.export`` Tolerance, TOML table ``[validate.artifacts]``). With ``strict``, any
    rejected artifact fails the run (the CLI exits non-zero); otherwise only having nothing to ship
    does. A fold that changes the outputs beyond ``fold_tolerance`` is a bug and stops the run.
    """

    TABLE = "validate"
    enabled: bool = True
    fold_tolerance: float = 1e-4  # largest |output difference| the fold may cause (x the outputs' RMS when > 1)
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    max_rmse_increase: float = DEFAULT_MAX_RMSE_INCREASE
    latency_repeats: int = 50  # timed runs per latency figure (the median is reported)
    artifacts: Tolerance | None = None  # overrides the per-precision bounds it sets
    strict: bool = False

    def __post_init__(self) -> None:
        from deploykit.export.config import Tolerance

        boolean("validate.enabled", self.enabled)
        boolean("validate.strict", self.strict)
        object.__setattr__(self, "fold_tolerance", positive("validate.fold_tolerance", self.fold_tolerance))
        object.__setattr__(self, "max_accuracy_drop", fraction("validate.max_accuracy_drop", self.max_accuracy_drop))
        object.__setattr__(self, "max_rmse_increase", number("validate.max_rmse_increase", self.max_rmse_increase, 0.0))
        integer("validate.latency_repeats", self.latency_repeats, 1)
        if isinstance(self.artifacts, dict):
            table = check_keys(Tolerance, self.artifacts, "[validate.artifacts]")
            object.__setattr__(self, "artifacts", Tolerance.from_dict(table))
        if self.artifacts is not None and not isinstance(self.artifacts, Tolerance):
            raise ConfigError(f"validate.artifacts must be a table of bounds, got {self.artifacts!r}")

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        if self.artifacts is not None:
            values["artifacts"] = {k: v for k, v in self.artifacts.to_dict().items() if v is not None}
        return values

    def budget(self, task: Task | None = None):
        """The :class:`~deploykit.evaluate.Budget` of a model of ``task``: accuracy drop, or RMSE increase."""
        from deploykit.evaluate import Budget, Metric

        if task is Task.REGRESSION:
            return Budget(Metric.RMSE, self.max_rmse_increase)
        return Budget(Metric.ACCURACY, self.max_accuracy_drop)

    def tolerance_for(self, precision: str, task: Task | None = None):
        """The tolerance an artifact of ``precision`` is held to against the Keras model it came from.

        The exporter's own int8 bound (accuracy within a point, or RMSE within 5%, of that model) gives
        way to the budget, which is measured against the original model; ``artifacts`` still overrides both.
        """
        import dataclasses as dc

        from deploykit.export.config import Tolerance

        own = dc.replace(Tolerance.for_precision(precision, task), max_accuracy_drop=None, max_rmse_increase=None)
        return own.overridden(self.artifacts)


_STEPS = {"input": InputConfig, "fold": FoldStep, "sparsity": SparsityStep, "compact": CompactStep,
          "export": ExportStep, "mc": MCStep, "ensemble": EnsembleStep, "validate": ValidateStep}

#: The flat keyword options of ``optimize(**options)`` and ``OptimizeConfig.with_options``.
OPTIONS = ("fold", "sparsity", "l1", "threshold", "epochs", "distill", "quick", "compact", "export", "formats",
           "quantize", "quantization", "precisions", "onnx_int8", "tflite_int8", "triton", "mc", "samples", "mc_seed", "mask",
           "temperature", "target_accuracy", "target_coverage", "target_rmse", "ood_data", "validate", "max_accuracy_drop",
           "max_rmse_increase", "strict", "ensemble_members", "ensemble_mc_samples")


@dataclass(frozen=True)
class OptimizeConfig:
    """The whole pipeline. Every step is on by default where the model allows it."""

    input: InputConfig = field(default_factory=InputConfig)
    fold: FoldStep = field(default_factory=FoldStep)
    sparsity: SparsityStep = field(default_factory=SparsityStep)
    compact: CompactStep = field(default_factory=CompactStep)
    export: ExportStep = field(default_factory=ExportStep)
    mc: MCStep = field(default_factory=MCStep)
    ensemble: EnsembleStep = field(default_factory=EnsembleStep)
    validate: ValidateStep = field(default_factory=ValidateStep)

    def __post_init__(self) -> None:
        for name, cls in _STEPS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"OptimizeConfig.{name} must be a {cls.__name__}, got {getattr(self, name)!r}")

    # --- dicts and TOML -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Any) -> OptimizeConfig:
        if isinstance(values, dict):  # the top level: its keys are the step tables
            unknown = sorted(set(values) - set(_STEPS))
            if unknown:
                raise ConfigError(f"unknown table [{unknown[0]}] (allowed: {', '.join(_STEPS)})")
        values = check_keys(cls, values, "[top level]")
        return cls(**{name: _STEPS[name].from_dict(table, name) for name, table in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() for name in _STEPS}

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> OptimizeConfig:
        """Read a TOML file; a missing file, bad TOML or a bad key is a ConfigError naming it."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
        return cls.from_toml_text(text, source=str(path))

    @classmethod
    def from_toml_text(cls, text: str, source: str = "config") -> OptimizeConfig:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from None
        try:
            return cls.from_dict(values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_toml(self) -> str:
        import tomli_w

        header = "# deploykit optimize pipeline; repeat the run with: deploykit optimize --config <this file>\n"
        return header + tomli_w.dumps(self.to_dict())

    # --- flat options ---------------------------------------------------------------------
    def with_options(self, **options: Any) -> OptimizeConfig:
        """A copy with the flat options applied (None values are ignored); see :data:`OPTIONS`.

        ``fold``, ``compact``, ``export``, ``mc``, ``validate``: switch a step (bool).
        ``sparsity``: a target in [0, 1) (prune to it, no search), ``"prune"``, ``"l1"``, ``"none"`` or False.
        ``l1``: l1 factor (selects the l1 method); ``threshold``: its zeroing threshold.
        ``epochs``: fine-tuning epochs of each sparsity try; ``distill``: distil from the original
        model (bool); ``quick``: skip the sparsity search (prune once to the configured target).
        ``formats``, ``quantize``: lists or comma-separated text (``quantize``: the exporter's variant names;
        ``quantization``: a QuantConfig or a dict of its fields; ``precisions``, ``onnx_int8``, ``tflite_int8``:
        deprecated, translated with a warning). ``samples``, ``mc_seed``: the MC model's defaults;
        ``temperature`` (bool: the deterministic ONNX models' and the MC model's), ``target_accuracy`` / ``target_coverage``: its calibration and abstain
        threshold; ``ood_data``: a path of OOD inputs for the MC report (``[input] ood_data``).
        ``max_accuracy_drop``: the accuracy budget (0.01 = one point); ``max_rmse_increase``: a regressor's budget
        (0.05 = test RMSE at most 5% above the original's); ``strict``: a rejected artifact fails the run.
        ``ensemble_members``: other model files, with the run's model the members of a deep ensemble (``[ensemble]``);
        ``ensemble_mc_samples``: MC Dropout inside each of them.
        """
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r} (allowed: {', '.join(OPTIONS)})")
        o = {k: v for k, v in options.items() if v is not None}
        c = self
        for name in ("fold", "compact", "export", "mc", "validate"):
            if name in o:
                boolean(name, o[name])
                c = dataclasses.replace(c, **{name: dataclasses.replace(getattr(c, name), enabled=o[name])})
        validate = {k: o[k] for k in ("max_accuracy_drop", "max_rmse_increase", "strict") if k in o}
        if validate:
            c = dataclasses.replace(c, validate=dataclasses.replace(c.validate, **validate))
        c = dataclasses.replace(c, sparsity=_sparsity_options(c.sparsity, o))
        export = {k: o[k] for k in ("formats", "quantize", "triton", "temperature") if k in o}
        if isinstance(o.get("quantization"), dict):  # int8 knobs merged over the config file's [export.quantization]
            export["quantization"] = {**c.export.quantization.to_dict(), **o["quantization"]}
        elif "quantization" in o:
            export["quantization"] = o["quantization"]
        if _LEGACY_KEYS & set(o):  # precisions / onnx_int8 / tflite_int8: deprecated spellings of quantize
            export = _legacy_export(export | {k: o[k] for k in _LEGACY_KEYS if k in o})
        if isinstance(export.get("triton"), (bool, dict)) and export["triton"] is not False and c.export.triton:
            given = {} if export["triton"] is True else export["triton"]  # merged over the config file's table
            export["triton"] = {**c.export.triton.to_dict(), **given}
        if "formats" in export and "quantize" not in export:  # the variants asked for, in the formats now asked for
            export["quantize"] = _in_formats(c.export.quantize, export["formats"])
        if export:
            c = dataclasses.replace(c, export=dataclasses.replace(c.export, **export))
        mc = {k: o[k] for k in ("samples", "temperature", "mask", *_TARGETS) if k in o}
        mc |= {"seed": o["mc_seed"]} if "mc_seed" in o else {}
        if any(k in mc for k in _TARGETS):  # a target given replaces the config file's
            mc = dict.fromkeys(_TARGETS) | mc
        if mc:
            c = dataclasses.replace(c, mc=dataclasses.replace(c.mc, **mc))
        if "ood_data" in o:
            c = c.with_input(ood_data=o["ood_data"])
        ensemble = {k: o[f"ensemble_{k}"] for k in ("members", "mc_samples") if f"ensemble_{k}" in o}
        if ensemble:
            c = dataclasses.replace(c, ensemble=dataclasses.replace(c.ensemble, **ensemble))
        return c

    def with_input(self, **values: Any) -> OptimizeConfig:
        """A copy with ``[input]`` values replaced (None values are ignored)."""
        return dataclasses.replace(self, input=dataclasses.replace(self.input, **{k: v for k, v in values.items() if v is not None}))

    def summary(self, task: Task | None = None) -> str:
        """One line: which steps run (the budget of a ``task`` model; default: the classifier's)."""
        s = self.sparsity
        prune = ("prune: highest of " + "/".join(f"{t:.0%}" for t in s.search.targets)) if s.searching \
            else f"prune to {s.prune.target_sparsity:.0%}"
        sparse = {"prune": prune, "l1": f"l1 {s.l1.l1:g}", "none": "no sparsity"}[s.method.value]
        sparse += " (distilled)" if s.enabled and getattr(s, s.method.value).distill else ""
        parts = [
            "fold" if self.fold.enabled else "no fold", sparse, "compact" if self.compact.enabled else "no compact",
            ("export " + "/".join(f.value for f in self.export.formats) + " x " + "/".join(q.value for q in self.export.quantize))
            if self.export.enabled else "no export",
            f"MC Dropout (T={self.mc.samples})" if self.mc.enabled else "no MC",
            *([f"ensemble of {len(self.ensemble.members) + 1}"] if self.ensemble.enabled else []),
            (f"budget RMSE +{100 * self.validate.max_rmse_increase:g}%" if (task or self.input.task) is Task.REGRESSION
             else f"budget {100 * self.validate.max_accuracy_drop:g} pt") if self.validate.enabled else "no validation",
        ]
        return ", ".join(parts)


def _sparsity_options(step: SparsityStep, o: dict[str, Any]) -> SparsityStep:
    method, prune, l1, search = step.method, step.prune, step.l1, step.search
    if "quick" in o:
        boolean("quick", o["quick"])
        search = dataclasses.replace(search, enabled=not o["quick"])
    if "sparsity" in o:
        value = o["sparsity"]
        if value is False:
            method = SparsityMethod.NONE
        elif isinstance(value, str):
            method = choice(SparsityMethod, "sparsity", value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            method, prune = SparsityMethod.PRUNE, prune.with_options(target_sparsity=fraction("sparsity", value))
            search = dataclasses.replace(search, enabled=False)  # a target given is the target wanted
        else:
            raise ConfigError(f"sparsity must be a target in [0, 1), 'prune', 'l1', 'none' or false, got {value!r}")
    if "l1" in o:
        if method is SparsityMethod.NONE and "sparsity" in o:
            raise ConfigError("options sparsity='none' and l1 contradict each other")
        method, l1 = SparsityMethod.L1, l1.with_options(l1=positive("l1", o["l1"]))
    if "threshold" in o:
        l1 = l1.with_options(threshold=o["threshold"])
    if "epochs" in o:
        integer("epochs", o["epochs"], 1)
        prune, l1 = prune.with_options(epochs=o["epochs"]), l1.with_options(epochs=o["epochs"])
    if "distill" in o:
        boolean("distill", o["distill"])
        prune, l1 = prune.with_options(distill=o["distill"]), l1.with_options(distill=o["distill"])
    return SparsityStep(method, prune, l1, search)
