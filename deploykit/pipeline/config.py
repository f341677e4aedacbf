"""The optimize pipeline's configuration: one frozen dataclass per step (:mod:`deploykit.pipeline.tables`),
assembled into :class:`OptimizeConfig`, read from and written to TOML, with the flat options of ``optimize``.

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
    tune_holdout = 0.15      # early stopping on this share of the training rows (default 0: the validation rows)
    [sparsity.l1]            # deploykit.sparsity.L1Config
    l1 = 0.001
    [compact]
    enabled = true
    [export]
    formats = ["onnx", "tflite"]
    quantize = ["float32", "float16", "int8-dynamic", "int8-full"]
    quantization_aware = true # int8-full missing after post-training int8: a QAT fine-tune, sparsity kept
    [mc]
    enabled = true
    samples = 30
    temperature = true       # fit T on the validation split, store it in the MC graph
    target_accuracy = 0.99   # optional: an `abstain` output (or target_coverage; not both)
    [ensemble]               # optional: a deep ensemble of this model and others (deploykit ensemble, in the run)
    members = ["m2.keras", "m3.keras"]
    [plan]                   # how the run plans its work (deploykit.pipeline.budget; earlier name: [search])
    time_budget = 10         # optional: minutes the whole run may take (default: unbounded, estimate said first)
    ray = "local"            # optional: the search's tries, int8 fallbacks, ensemble members as Ray tasks
    objective = "balanced"   # size | latency | balanced: the artifact within the budget the run recommends
    batch_size = 256         # the artifacts are timed at batch 1 and at this batch size (deploykit.pipeline.objective)
    [validate]
    enabled = true
    max_accuracy_drop = 0.01 # a classifier's budget vs the original model: decided on validation, confirmed on test
    max_rmse_increase = 0.05 # a regressor's budget: test RMSE at most 5% above the original model's
    max_nll_increase = 0.02  # a classifier's shipped files: NLL at most 2% above the user's model's (and a source's)

Unknown keys are a ConfigError naming the key and the keys allowed there.
This module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from deploykit.configs import check_keys
from deploykit.core.task import Task
from deploykit.errors import ConfigError
from deploykit.pipeline.registry import OPTIONS_BY_NAME, TABLES, TABLES_BY_NAME
from deploykit.pipeline.structured_table import StructuredStep  # noqa: F401  (re-exported: its earlier home)
from deploykit.pipeline.tables import (  # noqa: F401  (re-exported: their earlier home)
    CompactStep,
    ConformalStep,
    EnsembleStep,
    ExportStep,
    FoldStep,
    InputConfig,
    MCStep,
    SearchPlan,
    SparsityMethod,
    SparsityStep,
    ValidateStep,
)

#: The step tables by TOML name (derived from :data:`deploykit.pipeline.registry.TABLES`).
_STEPS = {t.name: t.cls for t in TABLES}

#: The flat keyword options of ``optimize(**options)`` and ``OptimizeConfig.with_options`` (from the registry).
OPTIONS = tuple(OPTIONS_BY_NAME)


def _with_tables(cls):
    """Give the config one field per registry table (a new table is a registry row, not an edit here)."""
    annotations = cls.__dict__.get("__annotations__", {})
    cls.__annotations__ = annotations
    for spec in TABLES:
        annotations[spec.name] = spec.cls.__name__
        setattr(cls, spec.name, field(default_factory=spec.cls))
    return cls


@dataclass(frozen=True)
@_with_tables
class OptimizeConfig:
    """The whole pipeline: one field per table of :data:`deploykit.pipeline.registry.TABLES` (``input``, ``fold``,
    ``structured``, ``sparsity``, ``compact``, ``export``, ``mc``, ``ensemble``, ``conformal``, ``validate``,
    ``plan``). Every step is on by default where the model allows it."""

    def __post_init__(self) -> None:
        for name, cls in _STEPS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"OptimizeConfig.{name} must be a {cls.__name__}, got {getattr(self, name)!r}")

    @property
    def search(self) -> SearchPlan:
        """The ``[plan]`` table by its earlier name (``[search]``, which ``[sparsity.search]`` also used)."""
        return self.plan

    # --- dicts and TOML -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Any) -> OptimizeConfig:
        if isinstance(values, dict):  # the top level: its keys are the step tables
            values = _renamed_tables(values)
            unknown = sorted(set(values) - set(_STEPS))
            if unknown:
                raise ConfigError(f"unknown table [{unknown[0]}] (allowed: {', '.join(_STEPS)})")
        values = check_keys(cls, values, "[top level]")
        return cls(**{name: _table(name, table) for name, table in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() for name in _STEPS}

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> OptimizeConfig:
        """Read a TOML file; a missing file, bad TOML or a bad key is a ConfigError naming it."""
        from deploykit.files import read_bytes
        from deploykit.limits import CONFIG_FILE_BYTES

        path = Path(path)
        try:  # a regular file of bounded size: /dev/zero or a FIFO never ends
            text = read_bytes(path, "config", ConfigError, CONFIG_FILE_BYTES).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
        return cls.from_toml_text(text, source=str(path))

    @classmethod
    def from_toml_text(cls, text: str, source: str = "config") -> OptimizeConfig:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from None
        except RecursionError:  # tomllib recurses per nesting level: [[[[...]]]] 5,000 deep
            raise ConfigError(f"{source}: not valid TOML (arrays or tables nested too deep)") from None
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
        model (bool); ``quick``: skip the sparsity search (prune once to the configured target); ``tune_holdout``: the
        share of the training rows every fine-tune stops early on (0: the validation rows).
        ``formats``, ``quantize``: lists or comma-separated text (``quantize``: the exporter's variant names;
        ``quantization``: a QuantConfig or a dict of its fields; ``precisions``, ``onnx_int8``, ``tflite_int8``:
        deprecated, translated with a warning); ``quantization_aware`` (bool): an int8-full TFLite file that misses the
        budget after post-training int8 is fine-tuned quantization-aware, its sparsity kept. ``samples``,
        ``mc_seed``: the MC model's defaults;
        ``temperature`` (bool: the deterministic ONNX models' and the MC model's),
        ``target_accuracy`` / ``target_coverage``: its calibration and abstain
        threshold, ``target_delta`` the risk that it misses on unseen data; ``conformal`` (a coverage),
        ``conformal_method``, ``conformal_by_class``: the conformal outputs (``[conformal]``);
        ``ood_data``: a path of OOD inputs for the MC report (``[input] ood_data``).
        ``max_accuracy_drop``: the accuracy budget (0.01 = one point); ``max_rmse_increase``: a regressor's budget
        (0.05 = test RMSE at most 5% above the original's); ``strict``: a rejected artifact fails the run.
        ``ensemble_members``: other model files, with the run's model the members of a deep ensemble (``[ensemble]``);
        ``ensemble_mc_samples``: MC Dropout inside each of them. ``structured``: the share of each hidden
        layer's units removed before the sparsity search (``[structured] fraction``; 0: off; ``"auto"``: the
        highest share within the budget, searched; unset: auto under ``objective="latency"``, else off).
        ``time_budget``: minutes the whole run may take
        (``[plan] time_budget``, see :mod:`deploykit.pipeline.budget`); ``ray``: ``"local"`` or a Ray cluster's
        address, the sparsity search's tries, the int8 fallbacks and an ensemble's members as Ray tasks
        (``[plan] ray``). Each option is a row of :data:`deploykit.pipeline.registry.TABLES`, which says the TOML
        keys it sets.
        """
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r} (allowed: {', '.join(OPTIONS)})")
        given = {k: v for k, v in options.items() if v is not None}
        for name, value in given.items():
            if OPTIONS_BY_NAME[name].check is not None:
                OPTIONS_BY_NAME[name].check(name, value)
        changed = {}
        for spec in TABLES:
            fields = _fields(spec.name, given)
            if any(o.name in given for o in spec.options) or fields:
                changed[spec.name] = spec.merge(getattr(self, spec.name), fields, given)
        return dataclasses.replace(self, **changed) if changed else self

    def with_input(self, **values: Any) -> OptimizeConfig:
        """A copy with ``[input]`` values replaced (None values are ignored)."""
        return dataclasses.replace(
            self, input=dataclasses.replace(self.input, **{k: v for k, v in values.items() if v is not None})
        )

    def summary(self, task: Task | None = None) -> str:
        """One line: which steps run (the budget of a ``task`` model; default: the classifier's)."""
        s = self.sparsity
        prune = (
            ("prune: highest of " + "/".join(f"{t:.0%}" for t in s.search.targets))
            if s.searching
            else f"prune to {s.prune.target_sparsity:.0%}"
        )
        sparse = {"prune": prune, "l1": f"l1 {s.l1.l1:g}", "none": "no sparsity"}[s.method.value]
        sparse += " (distilled)" if s.enabled and getattr(s, s.method.value).distill else ""
        parts = [
            "fold" if self.fold.enabled else "no fold",
            sparse,
            "compact" if self.compact.enabled else "no compact",
            (
                "export "
                + "/".join(f.value for f in self.export.formats)
                + " x "
                + "/".join(q.value for q in self.export.quantize)
            )
            if self.export.enabled
            else "no export",
            f"MC Dropout (T={self.mc.samples})" if self.mc.enabled else "no MC",
            *([f"ensemble of {len(self.ensemble.members) + 1}"] if self.ensemble.enabled else []),
            (
                f"budget RMSE +{100 * self.validate.max_rmse_increase:g}%"
                if (task or self.input.task) is Task.REGRESSION
                else f"budget {100 * self.validate.max_accuracy_drop:g} pt"
            )
            if self.validate.enabled
            else "no validation",
        ]
        return ", ".join(parts)


def _fields(table: str, given: dict[str, Any]) -> dict[str, Any]:
    """The given flat options that set a top-level field of ``table`` (by one of their keys), by field."""
    fields = {}
    for name, value in given.items():
        for key in OPTIONS_BY_NAME[name].keys:
            where, _, rest = key.partition(".")
            if where == table and "." not in rest:
                fields[rest] = value
    return fields


def _renamed_tables(values: dict[str, Any]) -> dict[str, Any]:
    """A table under its earlier name read as today's, with a FutureWarning (both given: a ConfigError)."""
    values = dict(values)
    for spec in TABLES:
        if spec.legacy is not None and spec.legacy in values:
            if spec.name in values:
                raise ConfigError(f"[{spec.legacy}] is the earlier name of [{spec.name}]: give one")
            warnings.warn(
                f"the table [{spec.legacy}] is now [{spec.name}] (its keys are the same)", FutureWarning, stacklevel=4
            )
            values[spec.name] = _LegacyTable(values.pop(spec.legacy))
    return values


class _LegacyTable(dict):
    """A table read under its earlier name: its errors name the table as the file does."""


def _table(name: str, values: Any):
    spec = TABLES_BY_NAME[name]
    if not isinstance(values, _LegacyTable):
        return spec.cls.from_dict(values, name)
    try:
        return spec.cls.from_dict(dict(values), spec.legacy)
    except ConfigError as exc:  # the dataclass names its fields by today's table: name them as the file does
        raise ConfigError(str(exc).replace(f"{name}.", f"{spec.legacy}.")) from None
