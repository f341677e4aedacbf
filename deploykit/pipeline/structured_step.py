"""The ``[structured]`` step: whole units and channels removed before the sparsity search, held to the budget.

Its own module (the step functions of ``steps.py`` are the model-changing steps every run has): it builds
the step's :class:`~deploykit.sparsity.StructuredConfig` from the pipeline's fine-tuning settings, decides on
the validation split and records its tries beside the sparsity search's.

``fraction = "auto"`` (the default under ``--objective latency``) searches the share: removing more units is
fewer multiply-adds, so a faster file in every dense runtime, and less accuracy. The shares of ``levels`` are
tried by bisection (about three fine-tuned tries for seven levels; the default) or, with ``search = "top-down"``,
highest first
until one is within the budget (at most :data:`TOP_DOWN_MISSES` misses; the speed is in the top shares, and a
try at :data:`LONG_RECOVERY` or more recovers with twice the patience), each pruned from the input model, distilled
from it and decided on validation by the runs' one accept rule (:func:`deploykit.pipeline.confirm.split_figure`,
the paired interval the magnitude search uses) and, for a classifier whose files are held to ``max_nll_increase``,
by the magnitude search's NLL rule (:mod:`deploykit.sparsity.nll_rule`: its validation NLL, under the temperature the
run would fold, within the limit of the original's; a try's note says which of the two it missed); the highest share
within both is kept. A share is never
tried above one that missed (more removed rarely scores better). Under a time budget the search takes at most
:data:`SEARCH_SHARE` of the time left to the sparsity search, and a try that cannot finish is not started.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from deploykit.core.evaluate import Budget, Metric
from deploykit.pipeline.context import RunContext, sparsity_rows, switched_off
from deploykit.pipeline.records import Stage, Status, StepOutput, StepRecord, Try
from deploykit.pipeline.search_rule import step_budget
from deploykit.records import Record

#: An ``auto`` search's share of the time left before the sparsity search's deadline (the magnitude search has
#: the rest: what the structured try removed, it no longer prunes).
SEARCH_SHARE = 0.5
#: A top-down search stops after this many shares missed (each a fine-tuning); the lower ones are not tried.
TOP_DOWN_MISSES = 4
#: A top-down try at this share or more fine-tunes with twice ``patience``: the most removed recovers slowest.
LONG_RECOVERY = 0.75


@dataclass
class StructuredSearch(Record):
    """What an ``auto`` structured search tried and kept (``kept`` None: no share within the budget)."""

    levels: list[float]
    tried: list[float] = field(default_factory=list)  # in the order tried
    kept: float | None = None
    report: object = None  # the kept try's StructuredReport
    search: str = "bisect"  # how levels were walked ([structured] search)
    note: str = ""  # why the search stopped before trying every level it could have


@dataclass(frozen=True)
class Held:
    """What every try of the step is held to, measured once per step: the step's share of the accuracy budget
    against the original's validation figure and outputs, and the run's NLL rule (None: a regressor, validation
    off, several outputs) with the original's raw validation outputs it judges against."""

    budget: Budget
    original: float  # the original model's validation figure
    reference: Any  # its main outputs on validation (the accept rule's pairing)
    nll: Any = None  # deploykit.sparsity.nll_rule.NllRule of this run, as the magnitude search gets it
    raw: Any = None  # the original's raw validation outputs (the NLL rule's reference), when ``nll``


def held(model, ctx: RunContext) -> Held:
    """The step's :class:`Held`: the magnitude search's NLL rule (:func:`deploykit.pipeline.search_rule.search_rule`,
    one rule for both searches), the step's share of the budget (:func:`step_budget`)."""
    from deploykit.core.evaluate import outputs, score
    from deploykit.pipeline.confirm import reference_outputs
    from deploykit.pipeline.search_rule import search_rule

    data, rule = ctx.data, search_rule(model, ctx)
    return Held(
        step_budget(ctx.budget, ctx.config.structured.budget_share),  # the later steps keep the rest
        score(ctx.original, data.x_val, data.y_val, data.task),
        (ctx.reference or reference_outputs(ctx.original, data, ctx.kind)).val,
        rule,
        None if rule is None else outputs(ctx.original, data.x_val),
    )


def structured_step(model, ctx: RunContext) -> StepOutput:
    """Remove ``[structured] fraction`` of each hidden layer's units (``auto``: the highest share of ``levels``
    within the budget); keep the result when its validation figure is within the budget of the original model's,
    else go on with the model unchanged."""
    step, objective = ctx.config.structured, ctx.config.plan.objective
    if not step.enabled(objective):
        return switched_off(model, "structured")
    if step.searching(objective):
        return _searched(model, ctx)
    config = _config(ctx, step.fixed, step.layer_fraction)
    by_cost = " (their multiply-adds, by cost)" if step.how(objective)[1] == "cost" else ""
    ctx.say(f"  removing {step.fixed:.0%} of each hidden layer's units{by_cost} (structured), then fine-tuning")
    attempt, result, report = _try(model, ctx, config, held(model, ctx))
    what = _what(report, attempt)
    if not attempt.kept:
        ctx.say(f"  {attempt.setting} missed: {attempt.note}")
        return StepOutput(
            model,
            StepRecord("structured", Status.MISSED, f"{what}; the model keeps its units", detail=report),
            tries=(attempt,),
        )
    ctx.say(f"  kept {attempt.setting}: {what}")
    return _kept(result, ctx, StepRecord("structured", Status.DONE, what, detail=report), (attempt,), step.fixed)


def _searched(model, ctx: RunContext) -> StepOutput:
    """The highest share of ``levels`` within the budget, by bisection or top-down; every try reported."""
    from deploykit.sparsity.tuning import teacher_of

    step, objective = ctx.config.structured, ctx.config.plan.objective
    levels, how = list(step.shares(objective)), step.how(objective)[0]
    epochs, stop_at = _planned(ctx)
    if epochs == 0:
        return StepOutput(
            model, StepRecord("structured", Status.SKIPPED, "no fine-tuning fits the time budget; units kept")
        )
    ctx.say(
        "  searching the highest share of units to remove within the budget (structured): "
        + "/".join(f"{v:.0%}" for v in levels)
        + f" ({how})"
    )
    base = _config(ctx, levels[0], {}, epochs)
    teacher = teacher_of(model, ctx.data) if base.distill else None
    tries, made, held_to = [], {}, held(model, ctx)

    def attempt(share: float) -> bool | None:
        if not _fits(stop_at, [t.seconds for t in tries]):
            ctx.say(f"  structured {share:.0%} not tried: it cannot finish within the time budget")
            return None
        config = dataclasses.replace(base, fraction=share, patience=_patience(base.patience, share, how))
        one, result, report = _try(model, ctx, config, held_to, teacher, _stopper(stop_at))
        tries.append(one)
        made[share] = (one, result, report, share)
        if not one.kept:
            ctx.say(f"  {one.setting} missed: {one.note}")
        return one.kept

    tried, kept = top_down(levels, attempt) if how == "top-down" else bisect(levels, attempt)
    search = StructuredSearch(levels, tried, kept, search=how, note=stopped_note(levels, tried, kept, how))
    if search.note:
        ctx.say(f"  structured: {search.note}")
    return _search_output(model, ctx, search, tries, made.get(kept))


def _patience(patience: int, share: float, how: str) -> int:
    """A top-down try's early-stopping patience: doubled at :data:`LONG_RECOVERY` or more (bisect: unchanged)."""
    return 2 * patience if how == "top-down" and share >= LONG_RECOVERY - 1e-9 else patience


def top_down(levels: list[float], attempt, misses: int = TOP_DOWN_MISSES) -> tuple[list[float], float | None]:
    """(shares tried in order, the first within the budget or None) of ``levels`` (highest first), highest first.

    ``attempt(share)`` as for :func:`bisect`. At most ``misses`` tries miss: then the search stops (a bound on the
    fine-tunings; the lower shares are what bisection would have tried, slower models the user did not ask for).
    """
    tried: list[float] = []
    for share in levels[:misses]:
        within = attempt(share)
        if within is None:
            break
        tried.append(share)
        if within:
            return tried, share
    return tried, None


def stopped_note(levels: list[float], tried: list[float], kept: float | None, how: str) -> str:
    """Why a top-down search ended with lower levels untried ("" when it did not)."""
    if how != "top-down" or kept is not None or len(tried) < TOP_DOWN_MISSES or len(tried) >= len(levels):
        return ""
    return f"stopped after {len(tried)} shares missed; {levels[len(tried)]:.0%} and lower not tried"


def bisect(levels: list[float], attempt) -> tuple[list[float], float | None]:
    """(shares tried in order, the highest within the budget or None) of ``levels`` (highest first), by bisection.

    ``attempt(share)``: True within the budget, False missed, None not tried (the time budget: the search stops).
    No share above one that missed is tried, none below one within: about log2(len(levels)) + 1 tries.
    """
    tried, kept = [], None
    low, high = 0, len(levels) - 1  # indices into levels
    while low <= high:
        mid = (low + high) // 2
        within = attempt(levels[mid])
        if within is None:
            break
        tried.append(levels[mid])
        if within:
            kept, high = levels[mid], mid - 1
        else:
            low = mid + 1
    return tried, kept


def _search_output(model, ctx: RunContext, search: StructuredSearch, tries: list[Try], best) -> StepOutput:
    """The step's record: the kept share (only its try marked kept), or the model unchanged."""
    if best is None:
        why = f"no share within the budget ({len(tries)} tried); the model keeps its units"
        why += f" ({search.note})" if search.note else ""
        return StepOutput(model, StepRecord("structured", Status.MISSED, why, detail=search), tries=tuple(tries))
    attempt, result, report, share = best
    search.report = report
    tries = [dataclasses.replace(t, kept=t is attempt) for t in tries]
    what = f"kept {share:.0%} of {len(tries)} tried: {_what(report, attempt)}"
    ctx.say(f"  structured: {what}")
    return _kept(result, ctx, StepRecord("structured", Status.DONE, what, detail=search), tuple(tries), share)


def _kept(result, ctx: RunContext, record: StepRecord, tries: tuple[Try, ...], share: float) -> StepOutput:
    return StepOutput(
        result,
        record,
        tries=tries,
        layer_sparsity=sparsity_rows(result, "after structured"),
        applied=(f"prune_structured({share:.2f})",),
    )


def _config(ctx: RunContext, share: float, layer_fraction: dict, epochs: int | None = None):
    """The step's StructuredConfig: the pipeline's fine-tuning settings (``[sparsity.prune]``), this share."""
    from deploykit.sparsity import StructuredConfig

    prune = ctx.config.sparsity.prune
    tuning = {
        f.name: getattr(prune, f.name)
        for f in dataclasses.fields(StructuredConfig)
        if f.name not in ("fraction", "layer_fraction", "compact", "allocate") and hasattr(prune, f.name)
    }
    if epochs is not None:
        tuning["epochs"] = epochs
    allocate = ctx.config.structured.how(ctx.config.plan.objective)[1]
    return StructuredConfig(fraction=share, layer_fraction=layer_fraction, allocate=allocate, **tuning)


def _planned(ctx: RunContext) -> tuple[int | None, float | None]:
    """(epochs per try, None: the config's; 0: none fits) and the search's deadline (None: no time budget)."""
    plan = ctx.plan
    if plan is None or plan.budget is None:
        return None, None
    if not plan.search:
        return 0, None
    now = time.monotonic()
    stop = plan.limits.stop_at if plan.limits.stop_at is not None else plan.deadline
    return plan.epochs, now + SEARCH_SHARE * max(0.0, stop - now)


def _fits(stop_at: float | None, seconds: list[float]) -> bool:
    """Whether one more try is expected to end before ``stop_at``: the slowest try so far (the first always runs)."""
    return stop_at is None or not seconds or time.monotonic() + max(seconds) <= stop_at


def _stopper(stop_at: float | None) -> tuple:
    from deploykit.sparsity.deadline import deadline_callback

    return () if stop_at is None else (deadline_callback(stop_at),)


def _try(model, ctx: RunContext, config, held_to: Held, teacher=None, callbacks: tuple = ()):
    """(Try, model, StructuredReport) of one share, decided on validation against the original model's outputs:
    within the step's share of the budget and, when the run holds files to it, within the NLL limit."""
    from deploykit.core.evaluate import outputs
    from deploykit.sparsity import prune_structured

    start = time.perf_counter()
    result, report = prune_structured(
        model, ctx.data, config=config, progress=lambda m: ctx.say("  " + m), teacher=teacher, callbacks=callbacks
    )
    val, nll, kept, note = decide(outputs(result, ctx.data.x_val), held_to, ctx)
    stopped = [c.stopped for c in callbacks if getattr(c, "stopped", None)]
    if stopped and not kept:
        note += f"; stopped at the time budget's deadline in epoch {stopped[0]} of {config.epochs}"
    attempt = Try(
        Stage.SPARSITY,
        f"structured {config.fraction:.0%}",
        **_figures(val, ctx),
        gzip_bytes=_gzip(result),
        kept=kept,
        note=note,
        seconds=round(time.perf_counter() - start, 2),
        ci95=val.ci95,
        nll_change=None if nll is None else nll.change,
    )
    return attempt, result, report


def decide(new, held_to: Held, ctx: RunContext) -> tuple:
    """(validation SplitFigure, NllFigure or None, kept, note) of a try's raw validation outputs ``new``: kept when
    within the step's share of the budget by the runs' accept rule (:func:`deploykit.pipeline.confirm.split_figure`)
    and, when held to it, within the NLL limit (:func:`deploykit.sparsity.nll_rule.judge`, the magnitude search's
    rule: a structured share within the budget but beyond ``max_nll_increase`` would have every file it ships
    rejected later by the same limit on test)."""
    from deploykit.core.evaluate import main_outputs
    from deploykit.pipeline.confirm import VALIDATION, split_figure
    from deploykit.sparsity.nll_rule import judge

    val = split_figure(VALIDATION, main_outputs(new, ctx.kind), held_to.reference, ctx.data.y_val, held_to.budget)
    nll = None if held_to.nll is None else judge(new, held_to.raw, ctx.data.y_val, held_to.nll)
    kept = val.within and (nll is None or nll.within)
    return val, nll, kept, "" if kept else miss_note(val, nll, held_to, ctx)


def miss_note(val, nll, held_to: Held, ctx: RunContext) -> str:
    """Why a try was not kept, led by what it missed, as the magnitude search's notes are: ``accuracy: ...`` (the
    step's share of the budget; its NLL figure follows when judged), or ``NLL: ...`` (within that share, beyond
    ``max_nll_increase``)."""
    from deploykit.sparsity.nll_rule import describe, miss_text

    figure = f"validation {ctx.budget.change(held_to.original, val.value)}, {_share(ctx)}"
    nll_text = "" if nll is None else describe(nll.nll, nll.change, nll.temperature, held_to.nll.limit)
    return miss_text(ctx.metric.value, figure, nll_text, nll_only=val.within)


def _share(ctx: RunContext) -> str:
    """``structured budget: 50% of accuracy drop <= 1 pt``: what a structured try is held to."""
    return f"structured budget: {ctx.config.structured.budget_share:.0%} of {ctx.budget.describe()}"


def _what(report, attempt: Try) -> str:
    macs = f"{report.macs_before:,} -> {report.macs_after:,} MACs ({report.mac_ratio:.2f}x fewer)"
    if attempt.accuracy_change is None:
        return macs
    nll = "" if attempt.nll_change is None else f", NLL {100 * attempt.nll_change:+.1f}%"
    return f"{macs}; validation {100 * attempt.accuracy_change:+.2f} pt{nll}"


def _figures(val, ctx: RunContext) -> dict:
    """A try's figures: its validation value and change against the original on the same rows."""
    if ctx.metric is Metric.RMSE:
        return {"accuracy": None, "accuracy_change": None, "rmse": val.value, "rmse_change": val.change}
    return {"accuracy": val.value, "accuracy_change": val.change}


def _gzip(model) -> int:
    from deploykit.sparsity.report import saved_sizes

    return saved_sizes(model)[1]
