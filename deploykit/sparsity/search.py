"""The accuracy-budgeted sparsity search: the highest target whose pruned model stays within the budget.

Targets are tried from the highest down (pruning more rarely helps accuracy, so the first model
within the budget is the sparsest one the search will find). Every try reuses what does not depend
on the target: the teacher's outputs (distillation) and the per-layer sensitivity, measured once by
pruning each layer alone, one shot, at a grid of levels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from deploykit.errors import StepError
from deploykit.evaluate import Budget, Metric, score
from deploykit.layers import support_for
from deploykit.records import Record
from deploykit.sparsity.config import PruneConfig, SearchConfig
from deploykit.sparsity.magnitude import prune
from deploykit.sparsity.report import SparsityReport, pruned_kernel
from deploykit.sparsity.tuning import check_inputs, choose_layers, rebuild, teacher_of

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
    """One target of the search, pruned, fine-tuned and measured on the test split."""

    target: float
    layer_targets: dict[str, float]
    sparsity: float  # reached, over every Dense kernel (protected ones included)
    accuracy: float | None  # test split; None when the try failed (or for a regressor)
    accuracy_change: float | None  # vs the original model
    gzip_bytes: int  # the pruned model saved as .keras, gzip
    kept: bool = False
    note: str = ""
    seconds: float = 0.0
    rmse: float | None = None  # a regressor's test RMSE (None for a classifier, or when the try failed)

    def setting(self) -> str:
        """``prune 90% (dense_1 93%, dense_2 84%)``: the target and, when they differ, the layers' own."""
        own = {n: t for n, t in self.layer_targets.items() if abs(t - self.target) > 5e-3}
        layers = f" ({', '.join(f'{n} {t:.0%}' for n, t in own.items())})" if own else ""
        return f"prune {self.target:.0%}{layers}"


@dataclass
class SearchReport(Record):
    """What the search tried and kept (``kept`` None: no target met the budget; the model stays dense)."""

    budget: Budget  # accuracy drop (classifiers) or RMSE increase (regressors) allowed vs the original
    original: float  # the original model's test figure in the budget's metric
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
):
    """Prune a copy of ``model`` to the highest of ``config.targets`` within ``budget`` of its test figure.

    ``reference``: the model the budget is measured against, when not ``model`` itself (a pipeline that
    changed the model before the search holds every try to the budget against the model it started from).

    ``budget``: a :class:`~deploykit.evaluate.Budget`, or a number in the data's own terms (a classifier's
    accuracy drop, 0.01 = one point; a regressor's RMSE increase as a fraction of the original's).

    Each try is :func:`~deploykit.sparsity.prune` with ``prune_config`` (its epochs, distillation,
    ...) at that target, with per-layer targets from the sensitivity scan when
    ``config.sensitivity``. Returns ``(model, SearchReport)``: the kept try's model, or ``model``
    itself when no target met the budget (or no layer is left to prune: ``tries`` is then empty).
    """
    config = config or SearchConfig()
    prune_config = prune_config or PruneConfig()
    say = progress or (lambda _m: None)
    if not isinstance(budget, Budget):
        budget = Budget(Metric.of(data.task), float(budget))
    original = score(model if reference is None else reference, data.x_test, data.y_test, data.task)
    chosen, protected = _prunable(model, data, prune_config, config.min_layer_weights)
    base = prune_config.with_options(skip_layers=tuple(dict.fromkeys((*prune_config.skip_layers, *protected))))
    sensitivity = _sensitivity(model, data, chosen, budget) if config.sensitivity and len(chosen) > 1 else []
    if sensitivity:
        say(f"sensitivity (validation {budget.metric.value} lost, one layer pruned alone to "
            + "/".join(f"{g:.0%}" for g in LEVELS) + "): "
            + "; ".join(f"{s.name} " + "/".join(f"{100 * d:.1f}" for d in s.drops) for s in sensitivity))
    teacher = teacher_of(model, data) if prune_config.distill else None
    report = SearchReport(budget, original, protected, sensitivity)
    for target in config.targets if chosen else ():  # every layer protected: nothing to try
        layer_targets = allocate(sensitivity, target) if sensitivity else {n: target for n in chosen}
        attempt, pruned, record = _try(model, data, base, target, layer_targets, teacher, original, budget.metric, say)
        report.tries.append(attempt)
        value = getattr(attempt, budget.metric.value)
        if value is not None and budget.within(original, value):
            attempt.kept, report.kept, report.report = True, attempt, record
            say(f"kept {attempt.setting()}: test {budget.metric.value} {value:.4g} ({budget.change(original, value)})")
            return pruned, report
        attempt.note = attempt.note or f"{budget.change(original, value)} vs the original, budget: {budget.describe()}"
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


def _sensitivity(model, data, layers: list[str], budget: Budget) -> list[LayerSensitivity]:
    """Prune each layer alone, one shot (smallest magnitudes to zero), and measure the validation score lost."""
    copy = rebuild(model)
    base = score(copy, data.x_val, data.y_val, data.task)
    out = []
    for name in layers:
        layer = copy.get_layer(name)
        weights = layer.get_weights()
        k = support_for(layer, unsafe=True).pruned_kernel[1]
        kernel = weights[k]
        magnitudes = np.sort(np.abs(kernel).ravel())
        drops = []
        for level in LEVELS:
            cut = magnitudes[min(len(magnitudes) - 1, int(level * len(magnitudes)))]
            zeroed = np.where(np.abs(kernel) < cut, 0, kernel).astype(kernel.dtype)
            layer.set_weights([*weights[:k], zeroed, *weights[k + 1:]])
            drops.append(max(0.0, budget.shortfall(base, score(copy, data.x_val, data.y_val, data.task))))
        layer.set_weights(weights)
        out.append(LayerSensitivity(name, int(kernel.size), list(LEVELS), list(np.maximum.accumulate(drops))))
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


def _try(model, data, config: PruneConfig, target, layer_targets, teacher, original, metric: Metric, say):
    """(SearchTry, pruned model or None, prune's report or None) of one target."""
    start = time.perf_counter()
    say(f"  try prune {target:.0%} over {config.epochs} epochs"
        + ("" if all(abs(t - target) < 5e-3 for t in layer_targets.values()) else
           " (" + ", ".join(f"{n} {t:.0%}" for n, t in layer_targets.items()) + ")"))
    try:
        pruned, record = prune(model, data, config=config.with_options(target_sparsity=target, layer_sparsity=layer_targets),
                               teacher=teacher)
    except StepError as exc:  # a layer missed its sparsity (too few steps for the schedule)
        return SearchTry(target, layer_targets, 0.0, None, None, 0, note=str(exc),
                         seconds=round(time.perf_counter() - start, 2)), None, None
    acc = record.accuracy_after
    attempt = SearchTry(target, layer_targets, record.sparsity, acc, None if acc is None else acc - original,
                        record.gzip_bytes_after, seconds=round(time.perf_counter() - start, 2), rmse=record.rmse_after)
    return attempt, pruned, record
