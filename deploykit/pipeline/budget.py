"""The run's plan: what a fine-tuning epoch and an export cost on this model, and what fits in the time budget.

Before the steps run, :func:`measure` times a few training batches (the first call's tracing apart), one
evaluation of the validation split and, with a time budget, one real export of the original model. :func:`plan`
then fits the work into the budget, cheapest cuts first: the most wanted artifacts first (ONNX float32, then
the int8 variants) with the rest dropped when their exports would not fit, a cheaper sensitivity scan (fewer
levels, a sample of the validation split, only the layers holding most of the weights), fewer epochs per try
(early stopping as always: on the validation rows, or on ``tune_holdout`` of the training rows) and fewer
tries. The plan is said in one line before the run starts; without a budget the line gives the estimated minutes of
the defaults.

While the run goes, :class:`Plan` is its clock: the search stops at its share (a try running then is stopped,
see :mod:`deploykit.sparsity.deadline`), the measured cost of the first export replaces the estimate, and a
later step that cannot finish before the deadline is skipped and reported as such: what is within the accuracy
budget by then ships. This module does not import TensorFlow at import time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

from deploykit.export.config import ExportFormat, Precision, Quantization
from deploykit.progress import clock
from deploykit.sparsity.deadline import CHEAP_LEVELS, SearchLimits
from deploykit.sparsity.holdout import fit_rows

#: The plan aims this far under the budget: what it cannot foresee (a try's tracing, loaded cores) stays within the
#: 10 % a run may overrun.
SAFETY = 0.15
#: A pruning try's epoch against a plain one (TF-MOT's masks and the distillation targets), until one is measured.
PRUNE_FACTOR = 1.4
#: Fewest epochs a budgeted try is given (the schedule prunes over 70 % of them, the rest recover).
MIN_EPOCHS = 2
#: The sensitivity scan's share of the search's time at most.
SCAN_SHARE = 0.2
#: Rows of the validation split a cheaper scan uses.
SCAN_ROWS = 512
#: An export's cost against one float32 ONNX export (conversion plus validation in its runtime), by variant kind.
#: int8-static calibrates, quantizes and validates: EfficientNetB0 (32x32) measured 3.3x and 4.8x its float32 export
#: (benchmarks/bench_time_budget.py, two runs on 2 loaded cores).
EXPORT_WEIGHT = {"float": 1.0, "int8-dynamic": 1.3, "int8-static": 3.5}
#: Steps that only improve the model: skipped once the deadline has passed (the model is saved and exported as it is).
OPTIONAL_STEPS = ("structured", "fold", "compact")
#: Without a measured export: seconds per layer of the model (tf2onnx / the TFLite converter), plus a constant.
EXPORT_PER_LAYER, EXPORT_BASE = 0.25, 3.0


@dataclass(frozen=True)
class Costs:
    """What this model costs here, in seconds."""

    epoch: float  # one pruning epoch over the training split, early stopping's pass included (estimated from batches)
    trace: float  # what each try pays once: building and tracing its model
    evaluation: float  # one score of the validation split
    export: float  # one float32 ONNX export, conversion and validation
    export_measured: bool  # ``export`` was timed on this model (else estimated from its layers)
    test_rows: int = 0
    val_rows: int = 0
    epoch_measured: bool = True  # False: estimated from an evaluation (no training step was timed)
    model_step: float = 0.0  # measuring the original model (a copy, a save, a test score, latency): what fold,
    # compact and save each cost again
    scan_evaluation: float = 0.0  # one score of the validation split through the traced function the sensitivity
    # scan scores with (core.compiled.CompiledOutputs; 0: not measured, the eager ``evaluation`` stands in)
    scan_trace: float = 0.0  # tracing that function once

    def describe(self) -> str:
        exported = f"export ~{clock(self.export)}" + ("" if self.export_measured else " est.")
        return f"epoch ~{clock(self.epoch)}{'' if self.epoch_measured else ' est.'}, {exported}"


#: Training a batch against evaluating it (the backward pass), for the optimistic estimate before any training.
TRAIN_OVER_EVAL = 3.0


def measure(model, data, prune_config, worth_training=lambda costs: True, model_step: float = 0.0) -> Costs:
    """This model's costs: an evaluation of the validation split, then (when ``worth_training`` of the optimistic
    estimate says a try could fit) a few training batches timed twice, the first including the tracing each try
    pays again. An export is estimated from the model's layers until the run's first one is measured
    (:meth:`Plan.observe_export`)."""
    import numpy as np

    from deploykit.backend import keras
    from deploykit.core.evaluate import score

    score(model, data.x_val, data.y_val, data.task)  # traced once
    evaluation = _seconds(lambda: score(model, data.x_val, data.y_val, data.task))
    trained = fit_rows(len(data.x_train), prune_config.tune_holdout)  # a fine-tune's holdout is not trained on...
    stop_pass = (
        evaluation * ((len(data.x_train) - trained) or len(data.x_val)) / max(1, len(data.x_val))
    )  # ...but scored
    steps = max(1, math.ceil(trained / prune_config.batch_size))
    export = EXPORT_BASE + EXPORT_PER_LAYER * len(model.layers)
    optimistic = Costs(
        TRAIN_OVER_EVAL * evaluation * trained / max(1, len(data.x_val)) + stop_pass,
        0.0,
        evaluation,
        export,
        False,
        len(data.x_test),
        len(data.x_val),
        epoch_measured=False,
        model_step=model_step,
    )
    if not worth_training(optimistic):  # not even an optimistic try fits: no need to trace a training step
        return optimistic
    from deploykit.sparsity.tuning import loss_for, rebuild

    copy = rebuild(model)
    copy.compile(optimizer=keras.optimizers.Nadam(prune_config.learning_rate), loss=loss_for(copy, data.task))
    batch, k = prune_config.batch_size, min(steps, 4)
    x, y = data.x_train[: k * batch], np.asarray(data.y_train[: k * batch])
    first = _seconds(lambda: copy.fit(x, y, batch_size=batch, epochs=1, verbose=0))
    steady = _seconds(lambda: copy.fit(x, y, batch_size=batch, epochs=1, verbose=0))
    epoch = PRUNE_FACTOR * steady / k * steps + stop_pass
    scan_evaluation, scan_trace = _traced_evaluation(model, data)
    return Costs(
        epoch,
        PRUNE_FACTOR * 1.5 * max(0.0, first - steady) + 2 * evaluation,
        evaluation,
        export,
        False,
        len(data.x_test),
        len(data.x_val),
        model_step=model_step,
        scan_evaluation=scan_evaluation,
        scan_trace=scan_trace,
    )


def _traced_evaluation(model, data) -> tuple[float, float]:
    """(one score of the validation split, tracing) through the traced function the sensitivity scan uses: an eager
    call pays Python dispatch per layer (MobileNetV3Small's scan: 80 CPU s eager, 21 traced), so pricing the scan at
    the eager cost planned a budgeted run's scan ~3.5x too short."""
    from deploykit.core.compiled import CompiledOutputs

    traced = CompiledOutputs(model)
    first = _seconds(lambda: traced.score(data.x_val, data.y_val, data.task))
    steady = _seconds(lambda: traced.score(data.x_val, data.y_val, data.task))
    return steady, max(0.0, first - steady)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _kind(quant: Quantization) -> str:
    if quant.precision is Precision.INT8:
        return "int8-static" if quant.needs_calibration else "int8-dynamic"
    return "float"


def export_cost(costs: Costs, quant: Quantization) -> float:
    """Seconds one export of ``quant`` is expected to take (conversion, calibration, validation), before any
    export of its kind was measured."""
    return costs.export * EXPORT_WEIGHT[_kind(quant)]


def priority(variants: list[tuple[ExportFormat, Quantization]]) -> list[tuple[ExportFormat, Quantization]]:
    """The order a budget exports in: ONNX float32 (what every runtime takes), the int8 variants, then the rest."""

    def rank(v):
        fmt, quant = v
        first = fmt is ExportFormat.ONNX and quant is Quantization.FLOAT32
        return (0 if first else 1 if quant.precision is Precision.INT8 else 2, variants.index(v))

    return sorted(variants, key=rank)


@dataclass
class Plan:
    """What the run will do and when it must have done it (``budget`` None: the defaults, with an estimate)."""

    budget: float | None  # seconds
    start: float  # time.monotonic() when the run started
    costs: Costs
    search: bool  # the sparsity search runs
    targets: tuple[float, ...] = ()
    epochs: int = 0
    patience: int | None = None
    limits: SearchLimits = field(default_factory=SearchLimits)
    variants: list[tuple[ExportFormat, Quantization]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # what the budget left out, said in the plan line
    estimates: dict[str, float] = field(default_factory=dict)  # seconds by part
    scan: str = ""  # how the sensitivity scan runs
    convolutions: bool = False  # the graph has convolutions: an int8-dynamic variant is exported as int8-static
    export_observed: bool = False
    measured: dict[str, float] = field(default_factory=dict)  # seconds of the first export of each kind

    @property
    def deadline(self) -> float | None:
        return None if self.budget is None else self.start + self.budget

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def observe_export(self, quant: Quantization, seconds: float) -> None:
        """An export measured in the run: the first one re-plans every export (scaled by kind), and each kind's
        own first measure (float, int8 dynamic, int8 calibrated: the int8 preparation is what a convnet pays) plans
        that kind's later exports and fallbacks."""
        quant = quant.for_graph(self.convolutions)
        if not self.export_observed:
            self.export_observed = True
            unit = export_cost(dataclasses.replace(self.costs, export=1.0), quant)
            self.costs = dataclasses.replace(self.costs, export=seconds / unit, export_measured=True)
        self.measured.setdefault(_kind(quant), seconds)

    def export_seconds(self, quant: Quantization) -> float:
        """What one export of ``quant`` is expected to take: its kind's measure, else scaled from the first export."""
        quant = quant.for_graph(self.convolutions)  # what int8_variants tries first on this graph
        return self.measured.get(_kind(quant), export_cost(self.costs, quant))

    def fits(self, seconds: float, grace: float = 0.0) -> bool:
        """Whether work of ``seconds`` ends before the deadline, ``grace`` (a fraction of the budget) past it
        allowed."""
        return seconds <= self.left() + grace * (self.budget or 0.0)

    def line(self) -> str:
        """The plan in one short line, said before the run starts (its parts' seconds are in the report)."""
        elapsed = time.monotonic() - self.start
        total = elapsed + sum(self.estimates.values())
        parts = []
        if self.search:
            many = "up to " if self.budget is None and len(self.targets) > 1 else ""
            tries = f"{len(self.targets)} tries" if len(self.targets) > 1 else "1 try"
            parts.append(
                f"{many}{tries} ({'/'.join(f'{t:.0%}' for t in self.targets)}) x "
                f"{self.epochs} epochs{', ' + self.scan if self.scan else ''} ~{clock(self.estimates['search'])}"
            )
        parts.append(f"{len(self.variants)} exports ~{clock(self.estimates.get('exports', 0.0))}")
        if self.estimates.get("mc"):
            parts.append(f"MC ~{clock(self.estimates['mc'])}")
        if self.dropped:
            parts.append("left out: " + ", ".join(self.dropped))
        head = f"plan for {clock(self.budget)}" if self.budget is not None else "plan (no --time-budget)"
        return f"{head}: ~{clock(total)} ({self.costs.describe()}): " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """What the report keeps of the plan."""
        return {
            "time_budget_s": self.budget,
            "targets": list(self.targets) if self.search else [],
            "epochs": self.epochs if self.search else None,
            "scan": self.scan,
            "exports": [f"{f.value} {q.value}" for f, q in self.variants],
            "left_out": list(self.dropped),
            "estimates_s": {k: round(v, 1) for k, v in self.estimates.items()},
            "measured": {
                "epoch_s": round(self.costs.epoch, 2),
                "export_s": round(self.costs.export, 2),
                "export_measured": self.costs.export_measured,
            },
        }


def make_plan(config, costs: Costs, start: float, n_layers: int, convolutions: bool = False) -> Plan:
    """Fit the run into ``config.plan.time_budget`` minutes (None: plan the defaults and estimate them).

    ``n_layers``: the prunable layers the search would scan; ``convolutions``: the graph has some (an int8-dynamic
    export then runs as int8-static, see :func:`deploykit.pipeline.int8_search.int8_variants`). The planned
    fine-tuning is TF-MOT pruning (the search's tries, or the one try of a given target); l1 runs as configured.
    """
    from deploykit.pipeline.tables import SparsityMethod

    budget = None if config.plan.time_budget is None else 60.0 * config.plan.time_budget
    step = config.sparsity
    pruning = step.method is SparsityMethod.PRUNE
    variants = config.export.variants() if budget is None else priority(config.export.variants())
    plan = Plan(
        budget,
        start,
        costs,
        search=pruning,
        variants=list(variants),
        targets=step.search.targets if step.searching else (step.prune.target_sparsity,),
        epochs=step.prune.epochs,
        convolutions=convolutions,
    )
    scanning = step.searching and step.search.sensitivity and n_layers > 1
    mc = _mc_seconds(config, costs)
    post = _post_seconds(costs)
    if budget is None:
        scan = _scan_seconds(costs, n_layers, 6, costs.val_rows) if scanning else 0.0
        plan.scan = describe_scan(SearchLimits(), n_layers, costs.val_rows) if scanning else ""
        plan.estimates = {
            "exports": sum(plan.export_seconds(q) for _, q in variants),
            "mc": mc,
            "post": post,
            "search": scan + len(plan.targets) * (costs.trace + plan.epochs * costs.epoch) if pruning else 0.0,
        }
        return plan
    avail = budget * (1 - SAFETY) - (time.monotonic() - start) - post
    if avail - sum(plan.export_seconds(q) for _, q in essential_variants(plan.variants)) < 0:
        plan.dropped += list(OPTIONAL_STEPS[1:])  # fold and compact only improve the model: the wanted exports first
        post = _post_seconds(costs, steps=1)
        avail = budget * (1 - SAFETY) - (time.monotonic() - start) - post
    avail = _fit_exports(plan, config, costs, avail, mc)
    plan.estimates["post"] = post
    if pruning:
        _fit_search(plan, step, costs, avail, n_layers if scanning else 0)
    return plan


def _mc_seconds(config, costs: Costs) -> float:
    """The MC Dropout model: an export and T evaluations of the test split (estimated)."""
    if not config.mc.enabled:
        return 0.0
    per_row = costs.evaluation / max(1, costs.val_rows)
    return 1.5 * costs.export + 1.2 * config.mc.samples * per_row * costs.test_rows * 2


def essential_variants(variants: list) -> list:
    """What a budgeted run ships first and never leaves out: the first export (ONNX float32) and the first int8."""
    int8 = [v for v in variants if v[1].precision is Precision.INT8][:1]
    return list(dict.fromkeys([*variants[:1], *int8]))


def _fit_exports(plan: Plan, config, costs: Costs, avail: float, mc: float) -> float:
    """Drop the least wanted exports, then the MC model, until they take at most 60 % of ``avail``; ONNX float32
    and the first int8 variant stay. Returns the time left for the search."""
    keep = set(essential_variants(plan.variants))

    def needs() -> float:
        return sum(plan.export_seconds(q) for _, q in plan.variants) + mc

    for v in [v for v in reversed(plan.variants) if v not in keep]:
        if needs() <= 0.6 * avail:
            break
        plan.variants.remove(v)
        plan.dropped.append(f"{v[0].value} {v[1].value}")
    if mc and needs() > 0.6 * avail:
        mc = 0.0
        plan.dropped.append("MC model")
    plan.estimates.update({"exports": needs() - mc, "mc": mc})
    return avail - needs()


def _fit_search(plan: Plan, step, costs: Costs, avail: float, n_layers: int) -> None:
    """The scan (``n_layers`` 0: none), tries and epochs that fit in ``avail`` seconds; no search when not even one
    short try fits."""
    one_try = costs.trace + MIN_EPOCHS * costs.epoch
    if avail < one_try:
        plan.search = False
        plan.dropped.append(f"sparsity (one {MIN_EPOCHS}-epoch try ~{clock(one_try)})")
        plan.estimates["search"] = 0.0
        return
    scan_seconds, limits = 0.0, SearchLimits(scan_share=0.0 if n_layers < 2 else 1.0)
    if n_layers > 1:
        scan_seconds, limits = _fit_scan(costs, n_layers, SCAN_SHARE * avail)
    left = avail - scan_seconds
    targets = plan.targets
    epochs = min(step.prune.epochs, max(MIN_EPOCHS, int((left / min(2, len(targets)) - costs.trace) / costs.epoch)))
    per_try = costs.trace + epochs * costs.epoch
    n = max(1, min(len(targets), int(left // per_try)))
    plan.targets, plan.epochs = _spread(targets, n), epochs
    plan.patience = min(step.prune.patience, max(1, epochs // 4))
    plan.estimates["search"] = scan_seconds + n * per_try
    plan.limits = dataclasses.replace(
        limits, stop_at=plan.start + plan.budget * (1 - SAFETY) - _after_search(plan), try_seconds=per_try
    )
    plan.scan = describe_scan(limits, n_layers, costs.val_rows) if n_layers > 1 else ""


def _after_search(plan: Plan) -> float:
    return sum(v for k, v in plan.estimates.items() if k in ("exports", "mc")) + plan.estimates.get("post", 0.0)


def _post_seconds(costs: Costs, steps: int = 3) -> float:
    """Fold, compact and save (``steps`` of them), each about what measuring the original model cost (a copy, a
    save, a test score), and the report and its plots (matplotlib takes seconds)."""
    return steps * max(costs.model_step, 2 * costs.evaluation) + 15.0


def _fit_scan(costs: Costs, n_layers: int, avail: float) -> tuple[float, SearchLimits]:
    """The richest scan within ``avail``: full; 3 levels; on SCAN_ROWS rows; on the layers holding 80 %, 50 % of the
    weights; else none (the tries take the common target everywhere)."""
    rows_all = costs.val_rows
    options = [
        (6, rows_all, 1.0),
        (len(CHEAP_LEVELS), rows_all, 1.0),
        (len(CHEAP_LEVELS), min(rows_all, SCAN_ROWS), 1.0),
        (len(CHEAP_LEVELS), min(rows_all, SCAN_ROWS), 0.8),
        (len(CHEAP_LEVELS), min(rows_all, SCAN_ROWS), 0.5),
    ]
    for levels, rows, share in options:
        layers = max(2, math.ceil(share * n_layers)) if share < 1 else n_layers  # an upper bound: the largest layers
        seconds = _scan_seconds(costs, layers, levels, rows)
        if seconds <= avail:
            return seconds, SearchLimits(
                levels=None if levels == 6 else CHEAP_LEVELS,
                scan_rows=None if rows == rows_all else rows,
                scan_share=share,
            )
    return 0.0, SearchLimits(scan_share=0.0)


def _scan_seconds(costs: Costs, layers: int, levels: int, rows: int) -> float:
    """The scan's seconds: one traced score per layer and level (and the baseline), after one tracing; the eager
    evaluation and a try's tracing when the traced function was not measured."""
    if costs.scan_evaluation > 0:
        per, trace = costs.scan_evaluation, costs.scan_trace
    else:
        per, trace = costs.evaluation, costs.trace
    return per * rows / max(1, costs.val_rows) * (layers * levels + 1) + trace


def _spread(targets: tuple[float, ...], n: int) -> tuple[float, ...]:
    """``n`` of the targets (highest first): all when they fit; else spread over the list, the highest (most often
    missed) left out first."""
    if n >= len(targets):
        return tuple(targets)
    if n == 1:
        return (targets[len(targets) // 2],)
    picks = [round(1 + i * (len(targets) - 2) / (n - 1)) for i in range(n)]
    return tuple(targets[i] for i in dict.fromkeys(picks))


def describe_scan(limits: SearchLimits, n_layers: int, val_rows: int) -> str:
    """The scan's words in the plan line."""
    if limits.scan_share <= 0:
        return "no sensitivity scan"
    levels = len(limits.levels) if limits.levels else 6
    share = "" if limits.scan_share >= 1 else f" (layers with {limits.scan_share:.0%} of the weights)"
    return f"sensitivity {levels} levels on {limits.scan_rows or val_rows} rows{share}"


def search_configs(plan: Plan, step) -> tuple[Any, Any]:
    """(SearchConfig, PruneConfig) of the planned search: its targets, epochs and patience."""
    search = dataclasses.replace(
        step.search, targets=plan.targets, sensitivity=step.search.sensitivity and plan.limits.scan_share > 0
    )
    prune = step.prune.with_options(epochs=plan.epochs, patience=plan.patience)
    return search, prune


def step_cost(plan: Plan, name: str, config) -> float | None:
    """Seconds a step of this name is expected to take when the budget may skip it (exports, MC); else None."""
    for fmt, quant in config.export.variants():
        if name == f"export {fmt.value} {quant.value}":
            return plan.export_seconds(quant)
    if name == "mc dropout" and config.mc.enabled:
        return _mc_seconds(config, plan.costs)
    return None


def observe_step(plan: Plan, name: str, config, seconds: float) -> None:
    """What a step took, told to the plan: an export's time re-plans the later exports (the runner names no step)."""
    quant = next((q for f, q in config.export.variants() if name == f"export {f.value} {q.value}"), None)
    if quant is not None:
        plan.observe_export(quant, seconds)


def skipped_reason(plan: Plan, name: str, config) -> str | None:
    """Why the budget skips this step now (None: it runs): left out by the plan, or no time left for it."""
    if plan.budget is None:
        return None
    if name.startswith("export ") and not any(name == f"export {f.value} {q.value}" for f, q in plan.variants):
        return "left out by the time budget's plan"
    if name == "mc dropout" and "MC model" in plan.dropped:
        return "left out by the time budget's plan"
    if name in plan.dropped:
        return "left out by the time budget's plan (the wanted exports first)"
    if name in OPTIONAL_STEPS and plan.left() <= 0:  # past the deadline: save what there is, skip what only improves it
        return "time budget: the deadline has passed"
    cost = step_cost(plan, name, config)
    essential = name in [f"export {f.value} {q.value}" for f, q in essential_variants(plan.variants)]
    if cost is not None and not plan.fits(cost, grace=0.1 if essential else 0.0):  # the 10 % the issue allows
        return f"time budget: {clock(max(0.0, plan.left()))} left, this step takes ~{clock(cost)}"
    return None
