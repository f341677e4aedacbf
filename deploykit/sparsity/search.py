"""The accuracy-budgeted sparsity search: the highest target whose pruned model stays within the budget.

Every try is decided on the validation split (the test split is the pipeline's, measured once at the end):
its change against the original model on the same rows, with the paired 95% interval, is accepted by
:func:`deploykit.stats.within_budget`, and, when a classifier's run holds files to ``max_nll_increase``, its
validation NLL (after the temperature the run would fold) must also be within that limit of the original's
(:mod:`deploykit.sparsity.nll_rule`): a try's note says which of the two it missed.

Targets are tried from the highest down (pruning more rarely helps accuracy, so the first model
within the budget is the sparsest one the search will find). Every try reuses what does not depend
on the target: the teacher's outputs (distillation) and the per-layer sensitivity, measured once by
pruning each layer alone, one shot, at a grid of levels.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from deploykit.core.evaluate import Budget, Metric, score
from deploykit.core.layers import support_for
from deploykit.errors import StepError
from deploykit.records import Record
from deploykit.sparsity.config import PruneConfig, SearchConfig
from deploykit.sparsity.deadline import SearchLimits
from deploykit.sparsity.magnitude import prune
from deploykit.sparsity.nll_rule import NllRule, describe, judge, miss_text
from deploykit.sparsity.report import SparsityReport, pruned_kernel
from deploykit.sparsity.tuning import check_inputs, choose_layers, rebuild, teacher_of
from deploykit.stats import (
    Interval,
    accepted,
    accuracy_change_interval,
    rmse_change_interval,
)

#: One-shot pruning levels of the sensitivity scan; per-layer targets are interpolated between them.
LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
#: The sparsest a single layer is pruned to, whatever the target (TF-MOT keeps at least one weight anyway).
MAX_LAYER_SPARSITY = LEVELS[-1]


@dataclass
class LayerSensitivity(Record):
    """Validation score lost (the budget's terms) when this layer alone is pruned, one shot, to each level."""

    name: str
    weights: int
    levels: list[float]
    drops: list[float]  # non-decreasing (a running maximum: more pruning never counts as helping)


@dataclass
class SearchTry(Record):
    """One target of the search, pruned, fine-tuned and measured on the validation split (where it is decided)."""

    target: float
    layer_targets: dict[str, float]
    sparsity: float  # reached, over every Dense kernel (protected ones included)
    accuracy: float | None  # validation split; None when the try failed (or for a regressor)
    accuracy_change: float | None  # vs the original model on the same rows
    gzip_bytes: int  # the pruned model saved as .keras, gzip
    kept: bool = False
    note: str = ""
    seconds: float = 0.0
    rmse: float | None = None  # a regressor's validation RMSE (None for a classifier, or when the try failed)
    ci95: list[float] | None = None  # 95% interval of the paired validation change (accuracy, or RMSE as a fraction)
    change: Interval | None = field(default=None, repr=False)  # the change with its interval (not in JSON: ci95 is)
    nll: float | None = None  # validation NLL as the run would ship it (None: not held to the NLL limit)
    nll_change: float | None = None  # vs the original's on the same rows (0.02 = 2 % higher)
    nll_within: bool | None = None  # within max_nll_increase (None: not judged; accuracy alone decides)
    temperature: float | None = None  # the temperature the run would fold into this try (1.0: none)

    def setting(self) -> str:
        """``prune 90% (dense_1 93%, dense_2 84%)``: the target and, when they differ, the layers' own."""
        own = {n: t for n, t in self.layer_targets.items() if abs(t - self.target) > 5e-3}
        layers = f" ({', '.join(f'{n} {t:.0%}' for n, t in own.items())})" if own else ""
        if len(own) > 4:  # a convnet's dozens of layers: the count (each layer's target is in the report's detail)
            layers = f" ({len(own)} layers with their own target)"
        return f"prune {self.target:.0%}{layers}"


@dataclass
class SearchReport(Record):
    """What the search tried and kept (``kept`` None: no target met the budget; the model stays dense)."""

    budget: Budget  # accuracy drop (classifiers) or RMSE increase (regressors) allowed vs the original
    original: float  # the original model's validation figure in the budget's metric
    protected: dict[str, str]  # layers left dense, with the reason
    sensitivity: list[LayerSensitivity]
    tries: list[SearchTry] = field(default_factory=list)
    kept: SearchTry | None = None
    report: SparsityReport | None = None  # prune's own record of the kept try


def search_sparsity(
    model,
    data,
    budget: Budget | float = 0.01,
    *,
    config: SearchConfig | None = None,
    prune_config: PruneConfig | None = None,
    progress: Callable[[str], None] | None = None,
    reference=None,
    limits: SearchLimits | None = None,
    ray: str | None = None,
    nll: NllRule | None = None,
):
    """Prune a copy of ``model`` to the highest of ``config.targets`` within ``budget`` of its validation figure.

    ``reference``: the model the budget is measured against, when not ``model`` itself (a pipeline that
    changed the model before the search holds every try to the budget against the model it started from).

    ``budget``: a :class:`~deploykit.core.evaluate.Budget`, or a number in the data's own terms (a classifier's
    accuracy drop, 0.01 = one point; a regressor's RMSE increase as a fraction of the original's).

    Each try is :func:`~deploykit.sparsity.prune` with ``prune_config`` (its epochs, distillation,
    ...) at that target, with per-layer targets from the sensitivity scan when
    ``config.sensitivity``. Returns ``(model, SearchReport)``: the kept try's model, or ``model``
    itself when no target met the budget (or no layer is left to prune: ``tries`` is then empty).
    ``limits`` (a time budget's share, :mod:`deploykit.sparsity.deadline`): a cheaper scan, no try that cannot
    finish in time (reported as not tried), and a try running at the deadline stopped (reported as such).
    ``ray`` (``"local"`` or a cluster's address): the first try here while Ray readies its workers, the others,
    if it missed, as Ray tasks (:mod:`deploykit.sparsity.ray_search`); the same kept try as serially (without the
    try with the protected layers pruned too: ``config.prune_protected`` applies to serial searches).
    ``nll``: also hold every try's validation NLL to ``nll.limit`` above the original's (a classifier's run;
    :mod:`deploykit.sparsity.nll_rule`); a try missing either is not kept, and its note says which.
    """
    config = config or SearchConfig()
    prune_config = prune_config or PruneConfig()
    say = progress or (lambda _m: None)
    if not isinstance(budget, Budget):
        budget = Budget(Metric.of(data.task), float(budget))
    from deploykit.core.evaluate import outputs

    against = model if reference is None else reference
    reference = outputs(against, data.x_val)  # the original's validation outputs every try is paired with
    original = score(against, data.x_val, data.y_val, data.task)
    chosen, protected = _prunable(model, data, prune_config, config.min_layer_weights)
    base = prune_config.with_options(skip_layers=tuple(dict.fromkeys((*prune_config.skip_layers, *protected))))
    limits = limits or SearchLimits()
    sensitivity = _scan(model, data, chosen, budget, limits, say) if config.sensitivity and len(chosen) > 1 else []
    if sensitivity:
        say(sensitivity_line(sensitivity, budget))
    teacher = teacher_of(model, data) if prune_config.distill else None
    report = SearchReport(budget, original, protected, sensitivity)
    run_try = functools.partial(_try, nll=nll)
    if ray is not None and chosen:
        from deploykit.sparsity.ray_search import keep_first, run_tries

        plans = [(t, allocate(sensitivity, t) if sensitivity else {n: t for n in chosen}) for t in config.targets]
        results = run_tries(
            run_try,
            failed_try,
            model,
            data,
            base,
            plans,
            teacher,
            reference,
            budget.metric,
            say,
            ray,
            accept=lambda attempt: accepted(attempt, budget),
            stopper=limits.stopper(),
        )
        return keep_first(results, report, model, say, explain=lambda a: miss_note(a, budget, original, nll))
    for target in config.targets if chosen else ():  # every layer protected: nothing to try
        layer_targets = allocate(sensitivity, target) if sensitivity else {n: target for n in chosen}
        if not limits.next_try_fits([t.seconds for t in report.tries if t.seconds]):
            report.tries.append(not_tried(target, layer_targets))
            say(f"  prune {target:.0%} not tried: it cannot finish within the time budget")
            continue
        attempt, pruned, record = run_try(
            model, data, base, target, layer_targets, teacher, reference, budget.metric, say, limits.stopper()
        )
        report.tries.append(attempt)
        value = getattr(attempt, budget.metric.value)
        if accepted(attempt, budget):
            if config.prune_protected and _worth_pruning(model, protected, chosen):
                for level in protected_levels(attempt.target):
                    wider = _with_protected(
                        model, data, prune_config, attempt, protected, level, (teacher, reference), budget, limits,
                        say, run_try,
                    )  # fmt: skip
                    if wider is None:
                        break
                    report.tries.append(wider[0])
                    if accepted(wider[0], budget):
                        attempt, pruned, record = wider
                        value = getattr(attempt, budget.metric.value)
                        report.protected = {}  # none left dense
                        break
            attempt.kept, report.kept, report.report = True, attempt, record
            say(
                f"kept {attempt.setting()}: validation {budget.metric.value} {value:.4g} "
                f"({budget.change(original, value)}, 95% CI {_ci(attempt, budget)}){_nll_part(attempt)}"
            )
            return pruned, report
        attempt.note = attempt.note or miss_note(attempt, budget, original, nll)
        say(f"  {attempt.setting()} missed: {attempt.note}")
    return model, report


def _prunable(model, data, config: PruneConfig, min_weights: int) -> tuple[list[str], dict[str, str]]:
    """(layers the search prunes, {layer left dense: why}): the output layer and very small layers stay dense."""
    dense = check_inputs(model, data, "search_sparsity")
    chosen = choose_layers(dense, config, "search_sparsity")
    protected = {}
    if config.skip_output:
        protected[dense[-1]] = "output layer"
    for name in chosen:
        size = int(pruned_kernel(model.get_layer(name)).size)
        if size < min_weights:
            protected[name] = f"{size} weights < {min_weights}"
    return [n for n in chosen if n not in protected], protected


#: The protected layers' share of the prunable weights from which the kept target is tried with them pruned too
#: (a small convnet's output Dense and first conv: about half; an MLP's output layer: a few %, not worth a try).
PROTECTED_SHARE = 0.25
#: The protected layers' sparsities tried after the kept target, where lower, until one is within the budget: an
#: output layer often takes 80 % or 50 % where 95 % costs points (the keras.io convnet's: -4.4 pt at 95 %).
PROTECTED_LEVELS = (0.8, 0.5)


def protected_levels(target: float) -> list[float]:
    """The protected layers' sparsities tried with the kept ``target``, highest first: the target, then the
    :data:`PROTECTED_LEVELS` below it."""
    return [target, *(level for level in PROTECTED_LEVELS if level < target - 1e-9)]


def _worth_pruning(model, protected: dict[str, str], chosen: list[str]) -> bool:
    """Whether the layers the search left dense hold at least :data:`PROTECTED_SHARE` of the prunable weights."""
    sizes = {n: int(pruned_kernel(model.get_layer(n)).size) for n in (*protected, *chosen)}
    total = sum(sizes.values())
    return bool(protected) and total > 0 and sum(sizes[n] for n in protected) >= PROTECTED_SHARE * total


def _with_protected(
    model,
    data,
    prune_config: PruneConfig,
    kept: SearchTry,
    protected,
    level: float,
    against,
    budget,
    limits,
    say,
    run_try=None,
):
    """(SearchTry, model, record) of the kept try with the protected layers pruned to ``level`` too, or None when the
    time budget has no room for it. ``against``: (teacher, reference outputs); ``run_try``: the search's try (its
    NLL rule bound). The try is reported beside the others; the caller keeps it if accepted."""
    if not limits.next_try_fits([kept.seconds] if kept.seconds else []):
        return None
    teacher, reference = against
    config = prune_config.with_options(skip_layers=tuple(n for n in prune_config.skip_layers if n not in protected))
    targets = {**kept.layer_targets, **{n: min(level, MAX_LAYER_SPARSITY) for n in protected}}
    names = ", ".join(protected)
    say(f"  {kept.setting()} within the budget; trying it with {names} pruned to {level:.0%} too")
    attempt, pruned, record = (run_try or _try)(
        model, data, config, kept.target, targets, teacher, reference, budget.metric, say, limits.stopper()
    )
    attempt.note = attempt.note or f"{names} pruned to {level:.0%} too (left dense by the try before)"
    return attempt, pruned, record


def _scan(model, data, chosen: list[str], budget: Budget, limits: SearchLimits, say) -> list[LayerSensitivity]:
    """The sensitivity scan within ``limits``: its levels, rows and layers (the others take the target unscanned)."""
    from deploykit import progress as live

    sizes = {n: int(pruned_kernel(model.get_layer(n)).size) for n in chosen}
    layers = limits.scan_layers(sizes)
    levels = tuple(limits.levels or LEVELS)
    rows = min(limits.scan_rows or len(data.x_val), len(data.x_val))
    if len(layers) < 2:
        return []
    if (len(layers), levels, rows) != (len(chosen), LEVELS, len(data.x_val)):
        say(f"sensitivity scan: {len(layers)} of {len(chosen)} layers, {len(levels)} levels, {rows} validation rows")
    with live.task("sensitivity scan", len(layers), "layers") as bar:
        return _sensitivity(model, data, layers, budget, levels, rows, limits, bar.update)


def sensitivity_line(sensitivity: list[LayerSensitivity], budget: Budget, shown: int = 3) -> str:
    """One short line: the scan's size and its most sensitive layers (the full table is in the report)."""
    top = sorted(sensitivity, key=lambda s: -s.drops[-1])[:shown]
    levels = "/".join(f"{g:.0%}" for g in sensitivity[0].levels)
    return (
        f"sensitivity of {len(sensitivity)} layers at {levels} (validation {budget.metric.value} lost, one layer "
        "pruned alone); most sensitive: " + ", ".join(f"{s.name} {100 * s.drops[-1]:.1f}" for s in top)
    )


def _sensitivity(
    model,
    data,
    layers: list[str],
    budget: Budget,
    levels=LEVELS,
    rows: int | None = None,
    limits: SearchLimits | None = None,
    done=lambda: None,
    evaluator=None,
) -> list[LayerSensitivity]:
    """Prune each layer alone, one shot (smallest magnitudes to zero), and measure the validation score lost.

    On the first ``rows`` validation rows; a layer is not started past ``limits``' deadline (the rest go unscanned).
    ``evaluator`` (default :class:`~deploykit.core.compiled.CompiledOutputs`: one graph for every try, where an eager
    call costs ~0.5 s on a keras.applications network) scores the model; the eager one is the reference in tests.
    """
    from deploykit.core.compiled import CompiledOutputs

    copy = rebuild(model)
    x_val, y_val = data.x_val[:rows], data.y_val[:rows]
    evaluate = (evaluator or CompiledOutputs)(copy)
    base = evaluate.score(x_val, y_val, data.task)
    out = []
    for name in layers:
        if limits is not None and limits.left() <= 0:
            break
        layer = copy.get_layer(name)
        weights = layer.get_weights()
        k = support_for(layer, unsafe=True).pruned_kernel[1]
        kernel = weights[k]
        magnitudes = np.sort(np.abs(kernel).ravel())
        drops = []
        for level in levels:
            cut = magnitudes[min(len(magnitudes) - 1, int(level * len(magnitudes)))]
            zeroed = np.where(np.abs(kernel) < cut, 0, kernel).astype(kernel.dtype)
            layer.set_weights([*weights[:k], zeroed, *weights[k + 1 :]])
            drops.append(max(0.0, budget.shortfall(base, evaluate.score(x_val, y_val, data.task))))
        layer.set_weights(weights)
        out.append(LayerSensitivity(name, int(kernel.size), list(levels), list(np.maximum.accumulate(drops))))
        done()
    return out


def allocate(sensitivity: list[LayerSensitivity], target: float) -> dict[str, float]:
    """Per-layer targets whose weighted mean is ``target``, the least sensitive layers taking the most.

    Every layer is pruned as far as a common sensitivity threshold ``d`` allows (its one-shot
    drop curve, interpolated between the scanned levels, stays <= d); ``d`` is found by bisection
    so the kernels' mean sparsity meets ``target``. Layers no drop separates get ``target`` itself.
    """
    weights = np.array([s.weights for s in sensitivity], dtype=float)

    def levels_at(d: float) -> np.ndarray:
        return np.array([_level_within(s, d) for s in sensitivity])

    mean = lambda levels: float(np.dot(levels, weights) / weights.sum())  # noqa: E731
    if mean(levels_at(0.0)) >= target:  # robust everywhere up to the target: nothing to tell them apart
        return {s.name: target for s in sensitivity}
    low, high = 0.0, max(max(s.drops) for s in sensitivity)
    if mean(levels_at(high)) < target:
        return {s.name: target for s in sensitivity}
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if mean(levels_at(mid)) < target else (low, mid)
    return {s.name: round(min(MAX_LAYER_SPARSITY, float(v)), 3) for s, v in zip(sensitivity, levels_at(high))}


def _level_within(s: LayerSensitivity, d: float) -> float:
    """The highest level whose interpolated one-shot drop is <= d (0 below the first scanned level)."""
    levels, drops = [0.0, *s.levels], [0.0, *s.drops]
    best = 0.0
    for (g0, d0), (g1, d1) in zip(zip(levels, drops), zip(levels[1:], drops[1:])):
        if d1 <= d:
            best = g1
        elif d0 <= d:
            best = g0 + (g1 - g0) * (d - d0) / (d1 - d0)
            break
        else:
            break
    return best


def failed_try(target: float, layer_targets: dict[str, float], note: str) -> SearchTry:
    """The row of a try that produced no model (not started, or its task failed), saying why."""
    return SearchTry(target, layer_targets, 0.0, None, None, 0, note=note)


def not_tried(target: float, layer_targets: dict[str, float]) -> SearchTry:
    """The row of a target the time budget left no room for."""
    return failed_try(target, layer_targets, "not tried: it cannot finish within the time budget")


def _ci(attempt: SearchTry, budget: Budget) -> str:
    low, high = attempt.ci95 or [float("nan")] * 2
    return (
        f"{100 * low:+.2f} to {100 * high:+.2f} pt"
        if budget.metric is Metric.ACCURACY
        else f"{100 * low:+.1f}% to {100 * high:+.1f}%"
    )


def miss_note(attempt: SearchTry, budget: Budget, original: float, nll: NllRule | None = None) -> str:
    """Why a measured try was not kept, led by what it missed: ``accuracy: ...`` (the budget; its NLL figure
    follows when judged), or ``NLL: ...`` (within the budget, beyond ``max_nll_increase``)."""
    value = getattr(attempt, budget.metric.value)
    if value is None:
        return "not measured"
    figures = (
        f"{budget.change(original, value)} (95% CI {_ci(attempt, budget)}) vs the original "
        f"on validation, budget: {budget.describe()}"
    )
    nll_text = ""
    if nll is not None and attempt.nll is not None:
        nll_text = describe(attempt.nll, attempt.nll_change, attempt.temperature, nll.limit)
    nll_only = accepted_on_accuracy(attempt, budget) and attempt.nll_within is False
    return miss_text(budget.metric.value, figures, nll_text, nll_only)


def accepted_on_accuracy(attempt: SearchTry, budget: Budget) -> bool:
    """The budget's half of :func:`deploykit.stats.accepted` (the try's NLL set aside)."""
    return accepted(replace(attempt, nll_within=None), budget)


def _nll_part(attempt: SearchTry) -> str:
    """``, validation NLL +0.8% vs the original`` when the try was held to the NLL limit."""
    if attempt.nll_change is None:
        return ""
    calibrated = f" at T = {attempt.temperature:.3g}" if attempt.temperature not in (None, 1.0) else ""
    return f", validation NLL {100 * attempt.nll_change:+.1f}% vs the original{calibrated}"


def _validation_change(pruned, data, reference, metric: Metric) -> tuple[float, Interval, object]:
    """The pruned model's validation figure, its paired change vs the original's outputs on the same rows, and its
    validation outputs."""
    from deploykit.core.evaluate import outputs, predicted_classes, rmse

    new = outputs(pruned, data.x_val)
    if metric is Metric.RMSE:
        return rmse(new, data.y_val), rmse_change_interval(reference, new, data.y_val), new
    correct = predicted_classes(pruned, new) == data.y_val  # a sigmoid head's one column: p > 0.5
    was = predicted_classes(pruned, reference) == data.y_val  # the original has the same head
    return float(correct.mean()), accuracy_change_interval(was, correct), new


def _try(
    model,
    data,
    config: PruneConfig,
    target,
    layer_targets,
    teacher,
    reference,
    metric: Metric,
    say,
    stopper=None,
    nll: NllRule | None = None,
):
    """(SearchTry, pruned model or None, prune's report or None) of one target, measured on the validation split
    against the original's outputs there (``reference``); ``stopper`` ends it at a deadline; ``nll``: its NLL is
    judged too (a classifier's)."""
    start = time.perf_counter()
    own = {n: t for n, t in layer_targets.items() if abs(t - target) >= 5e-3}
    say(
        f"  try prune {target:.0%} over {config.epochs} epochs"
        + (f" ({len(own)} layers with their own target)" if own else "")
    )
    stopped = "" if stopper is None else "stopped at the time budget's deadline: "
    try:
        pruned, record = prune(
            model,
            data,
            config=config.with_options(target_sparsity=target, layer_sparsity=layer_targets),
            teacher=teacher,
            callbacks=() if stopper is None else (stopper,),
        )
    except StepError as exc:  # a layer missed its sparsity (too few steps for the schedule, or stopped at the deadline)
        why = stopped if getattr(stopper, "stopped", None) else ""
        return (
            SearchTry(
                target,
                layer_targets,
                0.0,
                None,
                None,
                0,
                note=why + str(exc),
                seconds=round(time.perf_counter() - start, 2),
            ),
            None,
            None,
        )
    value, change, new = _validation_change(pruned, data, reference, metric)
    regression = metric is Metric.RMSE
    judged = None if regression or nll is None else judge(new, reference, data.y_val, nll)
    attempt = SearchTry(
        target,
        layer_targets,
        record.sparsity,
        None if regression else value,
        None if regression else change.estimate,
        record.gzip_bytes_after,
        seconds=round(time.perf_counter() - start, 2),
        rmse=value if regression else None,
        ci95=change.as_list(),
        change=change,
    )
    if judged is not None:
        attempt.nll, attempt.nll_change, attempt.nll_within = judged.nll, judged.change, judged.within
        attempt.temperature = judged.temperature
    if getattr(stopper, "stopped", None):
        attempt.note = f"stopped at the time budget's deadline in epoch {stopper.stopped} of {config.epochs}"
    return attempt, pruned, record
