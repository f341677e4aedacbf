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
    [search]                 # how the run plans its work (deploykit.pipeline.budget)
    time_budget = 10         # optional: minutes the whole run may take (default: unbounded, estimate said first)
    ray = "local"            # optional: the sparsity search's tries as Ray tasks ("local" or a cluster's address)
    [validate]
    enabled = true
    max_accuracy_drop = 0.01 # a classifier's budget vs the original model: decided on validation, confirmed on test
    max_rmse_increase = 0.05 # a regressor's budget: test RMSE at most 5% above the original model's

Unknown keys are a ConfigError naming the key and the keys allowed there.
This module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from deploykit.configs import boolean, check_keys, choice, fraction, integer, positive
from deploykit.errors import ConfigError
from deploykit.pipeline.tables import (
    LEGACY_KEYS,
    TARGETS,
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
    StructuredStep,
    ValidateStep,
    in_formats,
    legacy_export,
)
from deploykit.task import Task

_STEPS = {
    "input": InputConfig,
    "fold": FoldStep,
    "structured": StructuredStep,
    "sparsity": SparsityStep,
    "compact": CompactStep,
    "export": ExportStep,
    "mc": MCStep,
    "ensemble": EnsembleStep,
    "conformal": ConformalStep,
    "validate": ValidateStep,
    "search": SearchPlan,
}

#: The flat keyword options of ``optimize(**options)`` and ``OptimizeConfig.with_options``.
OPTIONS = (
    "fold",
    "sparsity",
    "l1",
    "threshold",
    "epochs",
    "distill",
    "quick",
    "compact",
    "export",
    "formats",
    "quantize",
    "quantization",
    "precisions",
    "onnx_int8",
    "tflite_int8",
    "triton",
    "mc",
    "samples",
    "mc_seed",
    "mask",
    "temperature",
    "target_accuracy",
    "target_coverage",
    "target_rmse",
    "target_delta",
    "conformal",
    "conformal_method",
    "conformal_by_class",
    "ood_data",
    "validate",
    "max_accuracy_drop",
    "max_rmse_increase",
    "strict",
    "ensemble_members",
    "ensemble_mc_samples",
    "structured",
    "time_budget",
    "ray",
)


@dataclass(frozen=True)
class OptimizeConfig:
    """The whole pipeline. Every step is on by default where the model allows it."""

    input: InputConfig = field(default_factory=InputConfig)
    fold: FoldStep = field(default_factory=FoldStep)
    structured: StructuredStep = field(default_factory=StructuredStep)
    sparsity: SparsityStep = field(default_factory=SparsityStep)
    compact: CompactStep = field(default_factory=CompactStep)
    export: ExportStep = field(default_factory=ExportStep)
    mc: MCStep = field(default_factory=MCStep)
    ensemble: EnsembleStep = field(default_factory=EnsembleStep)
    conformal: ConformalStep = field(default_factory=ConformalStep)
    validate: ValidateStep = field(default_factory=ValidateStep)
    search: SearchPlan = field(default_factory=SearchPlan)

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
        model (bool); ``quick``: skip the sparsity search (prune once to the configured target).
        ``formats``, ``quantize``: lists or comma-separated text (``quantize``: the exporter's variant names;
        ``quantization``: a QuantConfig or a dict of its fields; ``precisions``, ``onnx_int8``, ``tflite_int8``:
        deprecated, translated with a warning). ``samples``, ``mc_seed``: the MC model's defaults;
        ``temperature`` (bool: the deterministic ONNX models' and the MC model's),
        ``target_accuracy`` / ``target_coverage``: its calibration and abstain
        threshold, ``target_delta`` the risk that it misses on unseen data; ``conformal`` (a coverage),
        ``conformal_method``, ``conformal_by_class``: the conformal outputs (``[conformal]``);
        ``ood_data``: a path of OOD inputs for the MC report (``[input] ood_data``).
        ``max_accuracy_drop``: the accuracy budget (0.01 = one point); ``max_rmse_increase``: a regressor's budget
        (0.05 = test RMSE at most 5% above the original's); ``strict``: a rejected artifact fails the run.
        ``ensemble_members``: other model files, with the run's model the members of a deep ensemble (``[ensemble]``);
        ``ensemble_mc_samples``: MC Dropout inside each of them. ``structured``: the share of each hidden
        layer's units removed before the sparsity search (``[structured] fraction``; 0: off).
        ``time_budget``: minutes the whole run may take
        (``[search] time_budget``, see :mod:`deploykit.pipeline.budget`); ``ray``: ``"local"`` or a Ray cluster's
        address, the sparsity search's tries as Ray tasks (``[search] ray``).
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
        if "structured" in o:
            c = dataclasses.replace(c, structured=dataclasses.replace(c.structured, fraction=o["structured"]))
        export = {k: o[k] for k in ("formats", "quantize", "triton", "temperature") if k in o}
        if isinstance(o.get("quantization"), dict):  # int8 knobs merged over the config file's [export.quantization]
            export["quantization"] = {**c.export.quantization.to_dict(), **o["quantization"]}
        elif "quantization" in o:
            export["quantization"] = o["quantization"]
        if LEGACY_KEYS & set(o):  # precisions / onnx_int8 / tflite_int8: deprecated spellings of quantize
            export = legacy_export(export | {k: o[k] for k in LEGACY_KEYS if k in o})
        if isinstance(export.get("triton"), (bool, dict)) and export["triton"] is not False and c.export.triton:
            given = {} if export["triton"] is True else export["triton"]  # merged over the config file's table
            export["triton"] = {**c.export.triton.to_dict(), **given}
        if "formats" in export and "quantize" not in export:  # the variants asked for, in the formats now asked for
            export["quantize"] = in_formats(c.export.quantize, export["formats"])
        if export:
            c = dataclasses.replace(c, export=dataclasses.replace(c.export, **export))
        mc = {k: o[k] for k in ("samples", "temperature", "mask", "target_delta", *TARGETS) if k in o}
        mc |= {"seed": o["mc_seed"]} if "mc_seed" in o else {}
        if any(k in mc for k in TARGETS):  # a target given replaces the config file's
            mc = dict.fromkeys(TARGETS) | mc
        if mc:
            c = dataclasses.replace(c, mc=dataclasses.replace(c.mc, **mc))
        if "ood_data" in o:
            c = c.with_input(ood_data=o["ood_data"])
        flat = {"coverage": "conformal", "method": "conformal_method", "by_class": "conformal_by_class"}
        conformal = {key: o[name] for key, name in flat.items() if name in o}
        if conformal:
            c = dataclasses.replace(c, conformal=dataclasses.replace(c.conformal, **conformal))
        search = {k: o[k] for k in ("time_budget", "ray") if k in o}
        if search:
            c = dataclasses.replace(c, search=dataclasses.replace(c.search, **search))
        ensemble = {k: o[f"ensemble_{k}"] for k in ("members", "mc_samples") if f"ensemble_{k}" in o}
        if ensemble:
            c = dataclasses.replace(c, ensemble=dataclasses.replace(c.ensemble, **ensemble))
        return c

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
