"""The optimize pipeline as data: :data:`TABLES` (every TOML table, with the flat options and CLI flags that set
it) and :data:`STEPS` (every step of the run, in order), as :data:`deploykit.export.config.VARIANTS` is the
exporter's.

- A new option: one :class:`~deploykit.pipeline.options.Option` in its table's row (the field in its dataclass in
  :mod:`deploykit.pipeline.tables` if the table lacks it). ``optimize(name=)``, ``[table] key`` and
  ``deploykit optimize --name`` (with the row's help) follow, and ``tests/pipeline/test_registry.py`` checks all
  three accept the row's example.
- A new step: its module (``run(model, ctx) -> StepOutput``), its table's dataclass in ``tables.py`` if it has
  one, and its rows here (a :class:`TableSpec` and a :class:`StepSpec`). The runner knows no step by name.

Pure Python (no TensorFlow): the CLI reads it for ``--help``; run functions are named as ``"module:function"``
and imported when the run starts.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from deploykit.configs import boolean, choice, fraction, integer, positive
from deploykit.errors import ConfigError
from deploykit.pipeline.options import Cli, Option, StepSpec, TableSpec
from deploykit.pipeline.structured_table import STRUCTURED_SEARCHES, StructuredStep
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
    Objective,
    SearchPlan,
    SparsityMethod,
    SparsityStep,
    ValidateStep,
    in_formats,
    legacy_export,
)
from deploykit.sparsity.allocate import ALLOCATIONS


def _switch(name: str, help: str) -> Option:
    """``--no-NAME``: the step ``[NAME] enabled`` switched off."""
    return Option(name, (f"{name}.enabled",), help, Cli.OFF, example=False, check=boolean)


# --- how flat options land in a table (the default: each replaces its field) ---------------------------------------


def _sparsity(step: SparsityStep, fields: dict[str, Any], o: dict[str, Any]) -> SparsityStep:
    """``sparsity`` (a target, a method or False), ``l1``, ``threshold``, ``epochs``, ``distill``, ``quick``."""
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
    if "tune_holdout" in o:  # its range is the fine-tune config's (sparsity.config._TuneConfig)
        prune, l1 = prune.with_options(tune_holdout=o["tune_holdout"]), l1.with_options(tune_holdout=o["tune_holdout"])
    return SparsityStep(method, prune, l1, search)


def _export(step: ExportStep, fields: dict[str, Any], o: dict[str, Any]) -> ExportStep:
    """The variants, the int8 knobs and the Triton table merged over the config file's; deprecated spellings."""
    kept = ("enabled", "formats", "quantize", "triton", "temperature", "quantization_aware")
    export = {k: v for k, v in fields.items() if k in kept}
    if isinstance(o.get("quantization"), dict):  # int8 knobs merged over the config file's [export.quantization]
        export["quantization"] = {**step.quantization.to_dict(), **o["quantization"]}
    elif "quantization" in o:
        export["quantization"] = o["quantization"]
    if LEGACY_KEYS & set(o):  # precisions / onnx_int8 / tflite_int8: deprecated spellings of quantize
        export = legacy_export(export | {k: o[k] for k in LEGACY_KEYS if k in o})
    if isinstance(export.get("triton"), (bool, dict)) and export["triton"] is not False and step.triton:
        given = {} if export["triton"] is True else export["triton"]  # merged over the config file's table
        export["triton"] = {**step.triton.to_dict(), **given}
    if "formats" in export and "quantize" not in export:  # the variants asked for, in the formats now asked for
        export["quantize"] = in_formats(step.quantize, export["formats"])
    return dataclasses.replace(step, **export) if export else step


def _mc(step: MCStep, fields: dict[str, Any], o: dict[str, Any]) -> MCStep:
    """A selective target given replaces the config file's (they contradict each other)."""
    if any(k in fields for k in TARGETS):
        fields = dict.fromkeys(TARGETS) | fields
    return dataclasses.replace(step, **fields) if fields else step


# --- the tables ----------------------------------------------------------------------------------------------------

_TARGET = "add an `abstain` output"

#: Every TOML table, in the file's order: its dataclass and the flat options (and CLI flags) that set it.
TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "input",
        InputConfig,
        (
            Option(
                "ood_data",
                ("input.ood_data",),
                "out-of-distribution inputs (.npy, or .npz with an array x) for the MC report",
                path=True,
                shared=True,
                example="/data/ood.npz",
            ),
        ),
    ),
    TableSpec("fold", FoldStep, (_switch("fold", "do not fold BatchNorm / the input standardization"),)),
    TableSpec(
        "structured",
        StructuredStep,
        (
            Option(
                "structured",
                ("structured.fraction",),
                "first remove this share of each hidden layer's units and conv channels (structured pruning: "
                "fewer MACs, so faster in every runtime), kept when within the budget; 'auto': the highest share "
                "within the budget (searched); 0: off (default: auto with --objective latency, else off)",
                metavar="F|auto",
                example=0.25,
            ),
            Option(
                "structured_budget_share",
                ("structured.budget_share",),
                "the share of the accuracy budget the structured step may spend on validation; the magnitude "
                "search and int8, decided after it on the same rows, keep the rest (default: {default})",
                type=float,
                metavar="SHARE",
                example=0.4,
            ),
            Option(
                "structured_allocate",
                ("structured.allocate",),
                "how a structured share is spread over the layers: 'cost' removes the multiply-adds that share of "
                "every layer's units would, taking the least important units per multiply-add saved first (the "
                "costly layers lose more); 'uniform' the same share of each layer (default)",
                choices=ALLOCATIONS,
                example="cost",
            ),
            Option(
                "structured_search",
                ("structured.search",),
                "how an 'auto' structured search walks its levels: 'bisect' from the middle (about 3 tries), "
                "'top-down' from 85%% down, the first within the budget kept (default: bisect)",
                choices=STRUCTURED_SEARCHES,
                example="top-down",
            ),
        ),
    ),
    TableSpec(
        "sparsity",
        SparsityStep,
        (
            Option(
                "sparsity",
                ("sparsity.method",),
                "prune to this sparsity with TF-MOT, no search (default: the highest of 0.95/0.9/0.8/0.7/0.5 "
                "within the budget)",
                type=float,
                metavar="S",
                group="sparsity",
                off_value="none",
                off_help="keep the weights dense",
                example=0.9,
                toml={"sparsity": {"method": "prune", "prune": {"target_sparsity": 0.9}, "search": {"enabled": False}}},
            ),
            Option(
                "l1",
                ("sparsity.l1.l1",),
                "l1 sparsity with this factor instead of pruning",
                type=float,
                metavar="L1",
                group="sparsity",
                example=0.001,
                toml={"sparsity": {"method": "l1", "l1": {"l1": 0.001}}},
            ),
            Option(
                "threshold",
                ("sparsity.l1.threshold",),
                "l1: weights with |w| below it become 0 (default: {default})",
                type=float,
                example=0.05,
            ),
            Option(
                "epochs",
                ("sparsity.prune.epochs", "sparsity.l1.epochs"),
                "fine-tuning epochs of each sparsity try (default: {default})",
                type=int,
                example=5,
            ),
            Option(
                "quick",
                ("sparsity.search.enabled",),
                "skip the sparsity search: prune once to [sparsity.prune] target_sparsity",
                Cli.ON,
                example=True,
                toml={"sparsity": {"search": {"enabled": False}}},
            ),
            Option(
                "distill",
                ("sparsity.prune.distill", "sparsity.l1.distill"),
                "fine-tune on the labels only (default: distil from the original model)",
                Cli.OFF,
                example=False,
            ),
            Option(
                "tune_holdout",
                ("sparsity.prune.tune_holdout", "sparsity.l1.tune_holdout"),
                "share of the training rows every fine-tune holds out to stop early on, so the validation rows "
                "are only decided on (0: stop on the validation rows; default: {default})",
                type=float,
                metavar="SHARE",
                example=0.1,
            ),
        ),
        merge=_sparsity,
    ),
    TableSpec("compact", CompactStep, (_switch("compact", "do not remove dead neurons"),)),
    TableSpec(
        "export",
        ExportStep,
        (
            Option("formats", ("export.formats",), shared=True, example="onnx", toml={"export": {"formats": ["onnx"]}}),
            Option(
                "quantize",
                ("export.quantize",),
                shared=True,
                example="float32,int8-dynamic",
                toml={"export": {"quantize": ["float32", "int8-dynamic"]}},
            ),
            _switch("export", "write no ONNX / TFLite artifacts"),
            Option(
                "quantization",
                ("export.quantization",),
                shared=True,
                example={"num_calibration": 100},
                argv=("--num-calibration", "100"),
            ),
            Option("triton", ("export.triton",), cli=Cli.ON, shared=True, example=True),
            Option(
                "quantization_aware",
                ("export.quantization_aware",),
                "when post-training int8 misses the budget for an int8-full TFLite file, do not fine-tune it "
                "quantization-aware (TF-MOT, sparsity kept) before the larger fallbacks",
                Cli.OFF,
                example=False,
                check=boolean,
            ),
            Option("precisions", ("export.precisions",), cli=Cli.NONE, example=["float32", "int8"]),
            Option("onnx_int8", ("export.onnx_int8",), cli=Cli.NONE, example="static"),
            Option("tflite_int8", ("export.tflite_int8",), cli=Cli.NONE, example="dynamic"),
        ),
        merge=_export,
    ),
    TableSpec(
        "mc",
        MCStep,
        (
            _switch("mc", "do not build the MC Dropout ONNX model"),
            Option("samples", ("mc.samples",), "MC Dropout samples T (default: {default})", type=int, example=10),
            Option(
                "mc_seed",
                ("mc.seed",),
                "seed of the MC model's draws: every new session repeats the same sequence (default: fresh draws)",
                type=int,
                example=3,
            ),
            Option("mask", ("mc.mask",), shared=True, example="dropout"),
            Option(
                "temperature",
                ("export.temperature", "mc.temperature"),
                cli=Cli.OFF,
                shared=True,
                example=False,
                check=boolean,
            ),
            Option("target_accuracy", ("mc.target_accuracy",), _TARGET, shared=True, example=0.95),
            Option("target_coverage", ("mc.target_coverage",), _TARGET, shared=True, example=0.8),
            Option("target_rmse", ("mc.target_rmse",), _TARGET, shared=True, example=10.0),
            Option("target_delta", ("mc.target_delta",), shared=True, example=0.2),
        ),
        merge=_mc,
    ),
    TableSpec(
        "ensemble",
        EnsembleStep,
        (
            Option(
                "ensemble_members",
                ("ensemble.members",),
                "other trained models (the same inputs and task): with this one, the members of a deep ensemble "
                "written as ensemble/ensemble.onnx, each through this run's sparsity and int8-dynamic export, "
                "calibrated and thresholded like the MC model (what `deploykit ensemble` builds)",
                nargs="+",
                metavar="MODEL",
                path=True,
                example=["/models/b.keras"],
            ),
            Option(
                "ensemble_mc_samples",
                ("ensemble.mc_samples",),
                "MC Dropout inside each ensemble member: T samples each (default: deterministic members)",
                type=int,
                metavar="T",
                example=5,
            ),
        ),
    ),
    TableSpec(
        "conformal",
        ConformalStep,
        (
            Option("conformal", ("conformal.coverage",), shared=True, example=0.9),
            Option("conformal_method", ("conformal.method",), shared=True, example="aps", needs={"conformal": 0.9}),
            Option(
                "conformal_by_class",
                ("conformal.by_class",),
                cli=Cli.ON,
                shared=True,
                example=True,
                needs={"conformal": 0.9},
            ),
        ),
    ),
    TableSpec(
        "validate",
        ValidateStep,
        (
            Option(
                "max_accuracy_drop",
                ("validate.max_accuracy_drop",),
                "the accuracy budget: accuracy at most D below the original model's, for every kept model and "
                "shipped artifact, decided on the validation split and confirmed on the test split (a fraction: "
                "default {default} = one point); classifiers",
                type=float,
                metavar="D",
                example=0.02,
            ),
            Option(
                "max_rmse_increase",
                ("validate.max_rmse_increase",),
                "a regressor's budget: test RMSE at most this fraction above the original model's, for every kept "
                "model and shipped artifact (default {default} = 5%%)",
                type=float,
                metavar="F",
                example=0.1,
            ),
            Option(
                "max_nll_increase",
                ("validate.max_nll_increase",),
                "a classifier's shipped files: validation and test NLL at most this fraction above the original "
                "model's, and an export's above the model it was exported from (default {default} = 2%%); every "
                "report row gives its NLL change vs the original",
                type=float,
                metavar="F",
                example=0.05,
            ),
            Option(
                "strict",
                ("validate.strict",),
                "exit non-zero when any artifact was rejected (default: only when nothing deployable meets the budget)",
                Cli.ON,
                example=True,
            ),
            _switch("validate", "measure the artifacts but do not hold them to tolerances"),
            Option(
                "latency_repeats",
                ("validate.latency_repeats",),
                "timed runs per latency figure, the median reported (default: {default}; at most 5 under "
                "--time-budget)",
                type=int,
                metavar="N",
                example=3,
            ),
        ),
    ),
    TableSpec(
        "plan",
        SearchPlan,
        (
            Option(
                "time_budget",
                ("plan.time_budget",),
                "finish within this many minutes (at most 10%% over): the run measures a fine-tuning epoch (and "
                "each kind of export as it goes) on this model, plans fewer or shorter sparsity tries, a cheaper "
                "sensitivity scan and the most wanted artifacts first, says its plan, stops a try at its deadline "
                "and ships what is within the accuracy budget by then (default: no bound; the plan line gives the "
                "estimated minutes)",
                type=float,
                metavar="MINUTES",
                example=10.0,
            ),
            Option(
                "ray",
                ("plan.ray",),
                "run the independent work as Ray tasks (the sparsity search's tries, the int8 fallbacks, an "
                "ensemble's members): on a local Ray without ADDRESS, else on the cluster at ADDRESS (e.g. "
                '10.0.0.5:6379); the same results as serially (pip install "deploykit[ray]")',
                nargs="?",
                const="local",
                metavar="ADDRESS",
                example="local",
            ),
            Option(
                "objective",
                ("plan.objective",),
                "time every artifact within the budget in its runtime (onnxruntime, LiteRT) at batch 1 and "
                "--batch-size against the original model's float32 file, and recommend the smallest (size), the "
                "fastest (latency: a quantized file slower than float32 never is) or the knee of the size-latency "
                "Pareto front (balanced); report.md says all three (default: {default})",
                choices=tuple(o.value for o in Objective),
                example="latency",
            ),
            Option(
                "batch_size",
                ("plan.batch_size",),
                "the batch size the objective times the artifacts at, besides 1 (default: {default})",
                type=int,
                metavar="N",
                example=32,
            ),
        ),
        legacy="search",
    ),
)


# --- the steps -----------------------------------------------------------------------------------------------------


_STEPS_MODULE = "deploykit.pipeline.steps"

#: The run, in order (switched-off steps stay and record why they did nothing, except those with a ``when``).
#: Sparsity runs before the fold: folding the input standardization divides the first kernel's rows by each
#: feature's standard deviation, so near-constant features (the border pixels of digits) would get the largest
#: weights and magnitude pruning would keep exactly the useless ones. Zeros survive the fold (it scales rows and
#: columns), and compact follows it, where folded BatchNorm lets more dead neurons reach a Dropout as exact zeros.
#: The fallback follows the exports (it reads what they shipped) and precedes the objective, which times its files.
#: The Triton repository comes after the MC model and the ensemble, which it serves too.
STEPS: tuple[StepSpec, ...] = (
    StepSpec("structured", "deploykit.pipeline.structured_step:structured_step", "structured"),
    StepSpec("sparsity", f"{_STEPS_MODULE}:sparsity_step", "sparsity"),
    StepSpec("fold", f"{_STEPS_MODULE}:fold_step", "fold"),
    StepSpec("compact", f"{_STEPS_MODULE}:compact_step", "compact"),
    StepSpec("temperature", "deploykit.pipeline.calibrate:temperature_step", "export"),
    StepSpec("save model", f"{_STEPS_MODULE}:save_step"),
    StepSpec(
        "export",
        "deploykit.pipeline.uncertainty_steps:conformal_export_step",
        "export",
        expand="deploykit.pipeline.uncertainty_steps:variant_steps",
    ),
    StepSpec(  # the user's folded model, in each format where nothing of the chain shipped (after every export)
        "fallback",
        "deploykit.pipeline.fallback:fallback_step",
        "export",
        when=lambda config: config.export.enabled and bool(config.export.variants()),
        report="deploykit.pipeline.fallback:report_section",
    ),
    StepSpec(
        "objective",
        "deploykit.pipeline.objective:objective_step",
        "plan",
        when=lambda config: config.export.enabled and bool(config.export.variants()),
    ),
    StepSpec("mc dropout", "deploykit.pipeline.uncertainty_steps:mc_step", "mc"),
    StepSpec(
        "ensemble",
        "deploykit.pipeline.uncertainty_steps:ensemble_step",
        "ensemble",
        when=lambda config: config.ensemble.enabled,
        engine=True,
    ),
    StepSpec(
        "triton",
        "deploykit.pipeline.export_steps:triton_step",
        "export",
        when=lambda config: config.export.enabled and bool(config.export.triton),
    ),
)

#: Every flat option by name (``optimize(**options)``, ``OptimizeConfig.with_options``).
OPTIONS_BY_NAME = MappingProxyType({o.name: o for t in TABLES for o in t.options})
TABLES_BY_NAME = MappingProxyType({t.name: t for t in TABLES})
