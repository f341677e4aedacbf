"""A classifier artifact's negative log-likelihood: measured on every row, held to a limit on exported files.

Accuracy alone misses what int8 does to probabilities: an int8 softmax output rounds every probability
to a 1/256 step, so a confident mistake gets an exact 0 and a few rows cost the mean NLL dearly (+47 % on
a Fashion network at the same accuracy). Each classifier row therefore carries its NLL and its change vs
the user's model on the same rows (``nll``, ``nll_change``), and an exported file (ONNX, TFLite) whose NLL
is more than ``validate.max_nll_increase`` (default 2 %) above the model it was exported from's is
rejected. Decided on validation by the point estimate, like the accuracy budget; confirmed on test only
when the paired 95 % interval of the increase lies entirely beyond the limit: a mean NLL over a few hundred
rows is ruled by a handful of confident rows (one digits test row holds 20 nats), so a test point estimate
alone would reject on noise. The limit compares with the source model (``model.keras``), not the user's,
so an export is judged on what the export itself did. What changes ``model.keras`` is held to the same limit
against the user's model where it is decided: the sparsity search keeps a try only when its validation NLL, under
the temperature the run would fold, is within ``max_nll_increase`` of the original's
(:mod:`deploykit.sparsity.nll_rule`), and the temperature is kept only when its cross-validated NLL falls; the
change vs the user's model is shown in the same row.
"""

from __future__ import annotations

import numpy as np

from deploykit.errors import Mismatch
from deploykit.stats import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, LEVEL, Interval

#: Probabilities below this count as this (an exact 0 would make the mean infinite): 27.6 nats per such row.
FLOOR = 1e-12


def losses(probabilities, y) -> np.ndarray | None:
    """Each row's negative log-likelihood of its label (None when the outputs are not [N, C] class scores)."""
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(y).reshape(-1)
    if p.ndim != 2 or len(y) == 0 or len(p) != len(y) or not np.issubdtype(y.dtype, np.integer):
        return None
    if y.min() < 0 or y.max() >= p.shape[1]:
        return None
    return -np.log(np.maximum(p[np.arange(len(y)), y], FLOOR))


def nll(probabilities, y) -> float | None:
    """Mean negative log-likelihood of the labels ``y`` under ``probabilities`` [N, C] (None when not defined)."""
    row = losses(probabilities, y)
    return None if row is None else float(row.mean())


def relative(new: float | None, reference: float | None) -> float | None:
    """``new / reference - 1``: the NLL change as a fraction of the reference's (0.02 = 2 % higher)."""
    if new is None or reference is None:
        return None
    if reference <= 0:
        return 0.0 if new <= 0 else float("inf")
    return new / reference - 1


def change_interval(new_losses: np.ndarray, reference_losses: np.ndarray, samples: int = BOOTSTRAP_SAMPLES) -> Interval:
    """The relative NLL change on the same rows with its paired bootstrap percentile interval (seeded)."""
    n = len(new_losses)
    estimate = relative(float(new_losses.mean()), float(reference_losses.mean()))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws, chunk = [], max(1, min(samples, 2_000_000 // n))
    for start in range(0, samples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, samples - start), n))
        draws.append(new_losses[idx].sum(axis=1) / np.maximum(reference_losses[idx].sum(axis=1), 1e-300) - 1)
    d = np.concatenate(draws)
    alpha = (1 - LEVEL) / 2
    return Interval(estimate, float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha)))


def figures(probabilities, original, y) -> dict[str, float | None]:
    """A row's ``nll`` and ``nll_change`` (vs the user's model's outputs ``original`` on the same rows)."""
    value = nll(probabilities, y)
    return {"nll": value, "nll_change": relative(value, nll(original, y))}


def export_check(split: str, probabilities, source, y, limit: float, confirming: bool = False):
    """(figures, mismatches) of the NLL limit of an exported file on ``split`` against its source model's outputs
    ``source``: ``nll_export_change`` (and on test ``nll_export_ci95``). On validation (``confirming`` False)
    the point estimate decides; on test a miss is one whose interval lies entirely beyond ``limit``."""
    new, reference = losses(probabilities, y), losses(source, y)
    if new is None or reference is None:
        return {}, []
    change = relative(float(new.mean()), float(reference.mean()))
    found: dict = {"nll_export_change": change}
    detail = f"{split} NLL {new.mean():.4f} vs {reference.mean():.4f} ({100 * change:+.1f}%"
    if confirming:
        ci = change_interval(new, reference)
        found["nll_export_ci95"] = ci.as_list()
        detail += f", 95% CI {100 * ci.low:+.1f}% to {100 * ci.high:+.1f}%"
        missed = ci.estimate > limit + 1e-12 and ci.low > limit + 1e-12
    else:
        missed = change > limit + 1e-12
    if not missed:
        return found, []
    label = "test miss: " if confirming else f"{split} "
    check = f"{label}NLL increase vs the model it was exported from"
    return found, [Mismatch(check, change, f"<= {limit:g} (max_nll_increase)", detail + ")")]


# --- the pipeline's rows (ctx: pipeline.steps.RunContext) ---


def artifact_nll(probabilities, model, ctx, validation: bool):
    """(``nll`` and ``nll_change`` vs the user's model, the export's NLL mismatches) of a classifier artifact on the
    split measured, held to ``validate.max_nll_increase`` against ``model``, the model it was exported from.
    Nothing for a regressor or several outputs."""
    from deploykit.core.evaluate import main_outputs, outputs
    from deploykit.pipeline.confirm import TEST, VALIDATION, reference_outputs

    layout = getattr(ctx.data, "layout", None)
    if ctx.metric.value != "accuracy" or probabilities is None or (layout is not None and layout.several_outputs):
        return {}, []
    data = ctx.data
    x, y = (data.x_val, data.y_val) if validation else (data.x_test, data.y_test)
    if nll(probabilities, y) is None:
        return {}, []
    ref = ctx.reference or reference_outputs(ctx.original, data, ctx.kind)
    found = figures(probabilities, ref.val if validation else ref.test, y)
    if not hasattr(model, "layers"):
        return found, []
    source = main_outputs(outputs(model, x), ctx.kind)
    split = VALIDATION if validation else TEST
    limit = ctx.config.validate.max_nll_increase
    export, missed = export_check(split, probabilities, source, y, limit, confirming=not validation)
    return found | export, missed if ctx.config.validate.enabled else []


def keras_nll(test_probs, val_probs, ctx) -> dict:
    """A .keras row's NLL figures vs the user's model on test (and validation): reported, not held to a limit here
    (the sparsity search held its kept try to it on validation; the temperature decides on its own figures)."""
    from deploykit.pipeline.confirm import reference_outputs

    if ctx.metric.value != "accuracy" or nll(test_probs, ctx.data.y_test) is None:
        return {}
    ref = ctx.reference or reference_outputs(ctx.original, ctx.data, ctx.kind)
    found = {"test": figures(test_probs, ref.test, ctx.data.y_test)}
    if val_probs is not None:
        found["validation"] = figures(val_probs, ref.val, ctx.data.y_val)
    return found
