"""The optimize pipeline's step tables: one frozen dataclass per TOML table, validated on construction.

:mod:`deploykit.pipeline.config` assembles them into :class:`~deploykit.pipeline.config.OptimizeConfig` (the
TOML file's format is documented there). This module does not import TensorFlow.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploykit.configs import (
    MAX_MC_SAMPLES,
    SEED_MAX,
    boolean,
    check_keys,
    choice,
    fraction,
    integer,
    number,
    positive,
    text,
)
from deploykit.core.contract import MaskKind
from deploykit.core.task import Task
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
DEFAULT_MAX_NLL_INCREASE = 0.02  # a shipped file's NLL at most 2% above the user's model's (pipeline.nll)


class SparsityMethod(enum.Enum):
    PRUNE = "prune"  # TF-MOT magnitude pruning to a target sparsity
    L1 = "l1"  # l1 fine-tuning, then zero the small weights
    NONE = "none"


class Objective(enum.Enum):
    """What the run recommends among the artifacts within the budget (:mod:`deploykit.pipeline.objective`)."""

    SIZE = "size"  # the smallest file (gzip)
    LATENCY = "latency"  # the fastest at the batch size (an int8 slower than float32 never is)
    BALANCED = "balanced"  # the knee of the size-latency Pareto front


#: The batch size the objective times each candidate at, beside batch 1 (a serving batch; an offline job's is larger).
DEFAULT_BATCH_SIZE = 256


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
            from deploykit.data.dataset import check_class_names

            object.__setattr__(self, "class_names", check_class_names("input.class_names", self.class_names))
        for name in ("model", "ood_data"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"input.{name} must be a path, got {getattr(self, name)!r}")
        text("input.data", self.data)
        text("input.label_column", self.label_column)
        integer("input.seed", self.seed, 0, SEED_MAX)


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
    """Prune (TF-MOT) or l1-sparsify the Dense kernels;
    ``prune`` / ``l1`` / ``search`` are the sparsity module's configs.

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
                raise ConfigError(
                    f"sparsity.{name}.compact: the pipeline compacts in its own step; use [compact] enabled"
                )

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
        return {
            "method": self.method.value,
            "prune": self.prune.to_dict(),
            "l1": self.l1.to_dict(),
            "search": self.search.to_dict(),
        }


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
    # an int8-full TFLite that misses after post-training int8: fine-tune it quantization-aware, sparsity kept
    quantization_aware: bool = True

    def __post_init__(self) -> None:
        boolean("export.enabled", self.enabled)
        boolean("export.temperature", self.temperature)
        boolean("export.quantization_aware", self.quantization_aware)
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
        if isinstance(values, dict) and LEGACY_KEYS & set(values):
            values = legacy_export(values)
        if isinstance(values, dict) and "formats" in values and "quantize" not in values:
            values["quantize"] = in_formats(DEFAULT_QUANTIZE, values["formats"])
        return cls(**check_keys(cls, values, f"[{where}]"))

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        values["triton"] = values.get("triton") or False
        return values

    def variants(self) -> list[tuple[ExportFormat, Quantization]]:
        return [(f, q) for f in self.formats for q in self.quantize if f in q.formats] if self.enabled else []


LEGACY_KEYS = {"precisions", "onnx_int8", "tflite_int8", "calibration_samples"}


def _prefixed(where: str, fn, *args):
    """``fn(*args)`` with a ConfigError's message prefixed by the TOML table it concerns."""
    try:
        return fn(*args)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def in_formats(quantize: tuple[Quantization, ...], formats: Any) -> tuple[Quantization, ...]:
    """The variants of ``quantize`` that exist in at least one of ``formats``."""
    formats = set(parse_list(ExportFormat, formats, "export.formats", ConfigError))
    return tuple(q for q in quantize if set(q.formats) & formats)


def legacy_export(values: dict[str, Any]) -> dict[str, Any]:
    """An earlier [export] table (precisions, onnx_int8, tflite_int8, calibration_samples) in today's keys."""
    if "quantize" in values and "precisions" in values:
        raise ConfigError("export: give quantize or the deprecated precisions, not both")
    legacy = {k: values.pop(k) for k in list(values) if k in LEGACY_KEYS}
    if "precisions" in legacy or "onnx_int8" in legacy or "tflite_int8" in legacy:
        try:
            quantize = legacy_quantize(
                legacy.get("precisions", ["float32", "float16", "int8"]),
                legacy.get("onnx_int8", "dynamic"),
                legacy.get("tflite_int8", "full"),
            )
            values["quantize"] = in_formats(quantize, values.get("formats", ["onnx", "tflite"]))
        except ConfigError as exc:  # legacy_quantize names the key: precisions, onnx_int8...
            raise ConfigError(f"export.{exc}") from None
    if "calibration_samples" in legacy:
        table = values.get("quantization") or {}
        values["quantization"] = {
            **(table.to_dict() if isinstance(table, QuantConfig) else table),
            "num_calibration": legacy["calibration_samples"],
        }
    return values


@dataclass(frozen=True)
class MCStep(_Table):
    """The MC Dropout ONNX model (skipped, with the reason, when the model has no dropout).

    ``temperature``: fit a temperature on the validation split and store it in the graph.
    ``target_accuracy`` / ``target_coverage`` (at most one, in (0, 1]): add an ``abstain`` output whose
    predictive-entropy threshold reaches it on the validation split (see deploykit.uncertainty.selective).
    A regressor's threshold is on the 95% interval width: ``target_coverage``, or ``target_rmse`` (the kept
    rows' RMSE at most this, in the targets' units). ``target_delta``: the accuracy / RMSE target holds on unseen
    data with probability >= 1 - target_delta (a finite-sample bound; see deploykit.uncertainty.selective).
    """

    TABLE = "mc"
    enabled: bool = True
    samples: int = 30
    seed: int | None = None  # None: fresh draws per session; an int: repeatable outputs
    temperature: bool = True
    target_accuracy: float | None = None
    target_coverage: float | None = None
    target_rmse: float | None = None
    target_delta: float = 0.1
    mask: MaskKind = MaskKind.AUTO  # how each dropout mask is drawn (deploykit.uncertainty.masks.resolve_mask)

    def __post_init__(self) -> None:
        boolean("mc.enabled", self.enabled)
        object.__setattr__(self, "mask", choice(MaskKind, "mc.mask", self.mask))
        boolean("mc.temperature", self.temperature)
        integer("mc.samples", self.samples, 1, MAX_MC_SAMPLES)
        integer("mc.seed", self.seed, 0, SEED_MAX, optional=True)
        given = [n for n in TARGETS if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"mc.{given[0]} and mc.{given[1]} contradict each other: give one")
        for name in ("target_accuracy", "target_coverage"):
            number(f"mc.{name}", getattr(self, name), 0, 1, optional=True, open_low=True)
        number("mc.target_rmse", self.target_rmse, 0, optional=True, open_low=True)
        number("mc.target_delta", self.target_delta, 0, 1, open_low=True, open_high=True)

    def selective_target(self):
        """The SelectiveTarget these fields ask for (None: no abstain output)."""
        if all(getattr(self, n) is None for n in TARGETS):
            return None
        from deploykit.uncertainty.selective import SelectiveTarget

        return SelectiveTarget(**{n: getattr(self, n) for n in TARGETS}, target_delta=self.target_delta)


@dataclass(frozen=True)
class ConformalStep(_Table):
    """Split-conformal outputs calibrated on the validation split, in every ONNX classifier or regressor the run
    ships: the deterministic ONNX models, the MC model and the ensemble (deploykit.uncertainty.conformal).

    ``coverage`` (1 - alpha, in (0, 1); unset: no conformal outputs), ``method`` (raps, aps or lac) and
    ``by_class`` (one threshold per class) are the flat options ``conformal``, ``conformal_method`` and
    ``conformal_by_class``.
    """

    TABLE = "conformal"
    coverage: float | None = None
    method: str = "raps"
    by_class: bool = False

    def __post_init__(self) -> None:
        from deploykit.uncertainty.conformal import ConformalMethod

        object.__setattr__(self, "method", choice(ConformalMethod, "conformal.method", self.method).value)
        boolean("conformal.by_class", self.by_class)
        if self.coverage is None and (self.by_class or self.method != "raps"):
            raise ConfigError("conformal.method and conformal.by_class need conformal.coverage")
        self.config()

    def config(self):
        """The ConformalConfig of this table (None: no conformal outputs)."""
        from deploykit.uncertainty.conformal import ConformalConfig

        if self.coverage is None:
            return None
        try:
            return ConformalConfig(self.coverage, self.method, self.by_class)
        except ConfigError as exc:  # ConformalConfig names the flat options: name this table's keys
            message = str(exc)
            renames = (("conformal_method", "method"), ("conformal_by_class", "by_class"), ("conformal", "coverage"))
            for flat, key in renames:
                if message.startswith(flat):
                    message = f"conformal.{key}{message[len(flat) :]}"
                    break
            raise ConfigError(message) from None


#: The selective targets of the MC step: at most one is given.
TARGETS = ("target_accuracy", "target_coverage", "target_rmse")


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
class SearchPlan(_Table):
    """How the run plans its work (``deploykit.pipeline.budget``): ``time_budget`` in minutes bounds the whole run.

    The run measures what a fine-tuning epoch and an export cost on this model, plans the search within the
    budget (fewer tries and epochs, a cheaper sensitivity scan, the most wanted artifacts first), stops a try
    at its deadline and ships what is within the accuracy budget by then. None: the defaults, with the
    estimated minutes said first. ``ray``: run the search's tries, the int8 fallbacks and an ensemble's members
    as Ray tasks, on this machine (``"local"``) or on the cluster at that address (``pip install
    "deploykit[ray]"``). ``objective`` (size | latency | balanced)
    and ``batch_size``: every artifact within the budget is timed in its runtime at batch 1 and ``batch_size``
    against the original model's float32 file, and the run recommends the smallest, the fastest or the balanced one
    (:mod:`deploykit.pipeline.objective`).
    """

    TABLE = "plan"  # earlier [search]: still read, with a FutureWarning ([sparsity.search] is the sparsity search)
    time_budget: float | None = None  # minutes
    ray: str | None = None  # "local" or a Ray cluster's address: the run's independent work as Ray tasks
    objective: Objective = Objective.BALANCED  # which artifact within the budget the run recommends
    batch_size: int = DEFAULT_BATCH_SIZE  # the candidates are timed at batch 1 and at this batch size

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective", choice(Objective, "plan.objective", self.objective))
        integer("plan.batch_size", self.batch_size, 1, 65536)
        if self.ray is not None:
            text("plan.ray", self.ray)
        object.__setattr__(
            self, "time_budget", number("plan.time_budget", self.time_budget, 0.0, optional=True, open_low=True)
        )


@dataclass(frozen=True)
class ValidateStep(_Table):
    """The accuracy budget and the checks of each artifact.

    ``max_accuracy_drop`` (the budget) governs every step and artifact: accuracy at most this far below
    the original model's, decided on the validation split and confirmed once on the test split (a miss
    there after validation accepted is a test miss, see :mod:`deploykit.pipeline.confirm`).
    A regressor's budget is ``max_rmse_increase`` instead: test RMSE at
    most this fraction above the original's (its artifacts' own bounds are relative to the Keras model's
    outputs, see :meth:`Tolerance.for_precision`). The sparsity search keeps the highest target within it; an
    artifact outside it, or outside the exporter's per-precision tolerance against the Keras model
    it came from (float32: max diff <= 1e-4; float16: agreement >= 99.5%), is rejected: reported
    with its numbers and not shipped. ``artifacts`` overrides the per-precision bounds (a
    ``deploykit.export`` Tolerance, TOML table ``[validate.artifacts]``). With ``strict``, any
    rejected artifact fails the run (the CLI exits non-zero); otherwise only having nothing to ship
    does. A classifier's shipped file (``model.keras`` and every export) whose NLL is more than
    ``max_nll_increase`` (a fraction) above the user's model's, or an exported file's above the model it was
    exported from's, is rejected too (:mod:`deploykit.pipeline.nll`). A fold that changes the
    outputs beyond ``fold_tolerance`` is a bug and stops the run.
    """

    TABLE = "validate"
    enabled: bool = True
    fold_tolerance: float = 1e-4  # largest |output difference| the fold may cause (x the outputs' RMS when > 1)
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    max_rmse_increase: float = DEFAULT_MAX_RMSE_INCREASE
    max_nll_increase: float = DEFAULT_MAX_NLL_INCREASE  # a classifier's shipped files (deploykit.pipeline.nll)
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
        object.__setattr__(self, "max_nll_increase", number("validate.max_nll_increase", self.max_nll_increase, 0.0))
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
        """The :class:`~deploykit.core.evaluate.Budget` of a model of ``task``: accuracy drop, or RMSE increase."""
        from deploykit.core.evaluate import Budget, Metric

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
