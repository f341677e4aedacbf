"""The accept rules of the run's sequential searches: the sparsity search's NLL condition
(:mod:`deploykit.sparsity.nll_rule`) and the accuracy budget's share of each step (:func:`step_budget`).

Its own module: it reads the run's context and the temperature step's head check, which the NLL rows
(:mod:`deploykit.pipeline.nll`) must not depend on (the context imports those).
"""

from __future__ import annotations

from deploykit.core.evaluate import Budget


def step_budget(budget: Budget, share: float) -> Budget:
    """The budget an early step of a sequence is decided against: ``share`` of the run's ``budget``.

    The structured step, the magnitude search and int8 are decided one after the other, each on the same
    validation rows and each against the original model. Each keeps the *highest* setting the accept rule
    takes, so each kept figure is biased upwards (the best of several noisy tries), and a first step that may
    spend the whole budget leaves the later ones none: on the book's MLP, structured 80% took -0.92 of a
    1-point budget on validation, the magnitude search then kept 90% on the same rows, and the test split
    rejected every file. Every step is held to the whole budget against the original, so on validation the
    total never exceeds it; a share below 1 for the first step also keeps room for the later ones and for its
    selection bias. The point estimate and the interval's low end are both held to the share
    (:func:`deploykit.stats.within_budget`). The default share is 1 (``STRUCTURED_BUDGET_SHARE``): on five
    trainings of the book's network the later steps' fine-tuning recovered validation accuracy instead of
    spending it, and half the budget kept fewer units with no better test figure."""
    return Budget(budget.metric, budget.limit * share)


def search_rule(model, ctx):
    """The sparsity search's NLL rule of this run (:mod:`deploykit.sparsity.nll_rule`), or None when files are not
    held to ``max_nll_increase`` (validation off, a regressor, several outputs). It calibrates as the run will: the
    ``temperature`` step runs after the search, when switched on and the head can take a temperature."""
    from deploykit.errors import UnsupportedLayerError
    from deploykit.pipeline.calibrate import head_layer
    from deploykit.sparsity.nll_rule import NllRule
    from deploykit.uncertainty.generalises import kept_temperature_nll

    layout = getattr(ctx.data, "layout", None)
    if not ctx.config.validate.enabled or ctx.metric.value != "accuracy":
        return None
    if layout is not None and layout.several_outputs:
        return None
    calibrate = bool(ctx.config.export.temperature)
    if calibrate:
        try:
            head_layer(model)
        except UnsupportedLayerError:  # the step will skip the temperature: the try ships uncalibrated
            calibrate = False
    return NllRule(ctx.config.validate.max_nll_increase, ctx.kind, kept_temperature_nll if calibrate else None)
