"""The pipeline's side of the sparsity search's NLL condition (:mod:`deploykit.sparsity.nll_rule`): this run's rule.

Its own module: it reads the run's context and the temperature step's head check, which the NLL rows
(:mod:`deploykit.pipeline.nll`) must not depend on (the context imports those).
"""

from __future__ import annotations


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
