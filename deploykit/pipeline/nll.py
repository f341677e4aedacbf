"""A classifier artifact's negative log-likelihood: measured on every row, held to one budget against the user's model.

Accuracy alone misses what int8 does to probabilities: an int8 softmax output rounds every probability
to a 1/256 step, so a confident mistake gets an exact 0 and a few rows cost the mean NLL dearly (+47 % on
a Fashion network at the same accuracy). Each classifier row therefore carries its NLL and its change vs
the user's model on the same rows (``nll``, ``nll_change``, on test with its paired 95 % interval ``nll_ci95``).

**The run's NLL budget** (:func:`total_check`): every shipped classifier file (``model.keras``, every ONNX and
TFLite export; the MC and ensemble files by :func:`held_nll`) is at most ``validate.max_nll_increase`` (default
2 %) above the **user's model's** NLL on the same rows, as the accuracy budget is held against the original for
every artifact. Steps each within 2 % of their own source add up (95 % pruning +1.7 % and an int8-static export
+1.6 % made +3.3 % on a convnet), so the promise is held on the total. Decided on validation by the point estimate
(an int8 try that misses falls to the next rung, as an accuracy miss does). Confirmed on test as the accuracy budget
is (:func:`deploykit.pipeline.confirm.confirmed`): by the **point estimate where the test split resolves the budget**
(the paired 95 % interval of the change, ``nll_ci95``, is at most ``max_nll_increase`` wide each side), and where it
does not, rejected only when the whole interval lies beyond the limit. A mean NLL over a few hundred rows is ruled by
a handful of confident rows: on the book's network a 90 %-pruned file measured +0.5 % on validation and +3.07 % on
test with an interval of -2.11 % to +8.56 %, and the point estimate alone rejected every file of the run; a
convnet's int8 file at +3.26 % (interval +1.65 % to +4.99 %) is resolved and rejected. Unlike the accuracy budget's
row count, an NLL's resolution is known only once measured, so it is read from the file's own interval.

**Per export** (:func:`export_check`): an exported file is also held to ``max_nll_increase`` against the model it was
exported from (``model.keras``), which says what the export itself did. Decided on validation by the point
estimate; confirmed on test only when the paired 95 % interval of the increase lies entirely beyond the limit: a
mean NLL over a few hundred rows is ruled by a handful of confident rows (one digits test row holds 20 nats), so
this diagnostic rejects on test only what the export clearly did. The sparsity search holds each try to the budget
on validation already, under the temperature the run would fold (:mod:`deploykit.sparsity.nll_rule`); the
temperature is kept only when its cross-validated NLL falls.
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


def resolves(ci: Interval, limit: float) -> bool:
    """Whether a measured NLL change's interval can tell ``limit`` apart: at most ``limit`` wide each side."""
    return (ci.high - ci.low) / 2 <= limit + 1e-12


def total_check(split: str, probabilities, original, y, limit: float, confirming: bool = False, decided: bool = True):
    """(figures, mismatches) of the run's NLL budget on ``split``: a shipped file's NLL at most ``limit`` above the
    user's model's outputs ``original`` on the same rows: by the point estimate on validation; on test
    (``confirming``) by the point estimate where the split resolves the limit, else only when the whole paired
    interval (``nll_ci95``, in the figures) is beyond it (see the module docstring). A miss on test is a "test miss"
    when validation ``decided`` on the file first."""
    new, reference = losses(probabilities, y), losses(original, y)
    if new is None or reference is None:
        return {}, []
    change = relative(float(new.mean()), float(reference.mean()))
    found: dict = {}
    detail = f"{split} NLL {new.mean():.4f} vs {reference.mean():.4f} ({100 * change:+.2f}%"
    within = change <= limit + 1e-12
    if confirming:
        ci = change_interval(new, reference)
        found["nll_ci95"] = ci.as_list()
        detail += f", 95% CI {100 * ci.low:+.2f}% to {100 * ci.high:+.2f}%"
        within = within or (not resolves(ci, limit) and ci.low <= limit + 1e-12)
    if within:
        return found, []
    label = "test miss: " if confirming and decided else f"{split} "
    check = f"{label}NLL increase vs the user's model"
    return found, [Mismatch(check, change, f"<= {limit:g} (max_nll_increase)", detail + ")")]


# --- the pipeline's rows (ctx: pipeline.steps.RunContext) ---


def artifact_nll(probabilities, model, ctx, validation: bool):
    """(``nll`` and ``nll_change`` vs the user's model, the NLL mismatches) of a classifier artifact on the split
    measured: held to the run's budget against the user's model (:func:`total_check`) and, for an exported file,
    to ``validate.max_nll_increase`` against ``model``, the model it was exported from (:func:`export_check`).
    Nothing for a regressor or several outputs."""
    from deploykit.core.evaluate import main_outputs, outputs
    from deploykit.pipeline.confirm import TEST, VALIDATION

    if not _classifier(probabilities, ctx):
        return {}, []
    data = ctx.data
    x, y = (data.x_val, data.y_val) if validation else (data.x_test, data.y_test)
    if nll(probabilities, y) is None:
        return {}, []
    ref = _reference(ctx)
    original = ref.val if validation else ref.test
    split = VALIDATION if validation else TEST
    limit = ctx.config.validate.max_nll_increase
    total, missed = total_check(split, probabilities, original, y, limit, confirming=not validation)
    found = figures(probabilities, original, y) | total
    if hasattr(model, "layers"):
        source = main_outputs(outputs(model, x), ctx.kind)
        export, export_missed = export_check(split, probabilities, source, y, limit, confirming=not validation)
        found, missed = found | export, [*export_missed, *missed]
    return found, missed if ctx.config.validate.enabled else []


def keras_nll(test_probs, val_probs, ctx) -> tuple[dict, list]:
    """({"test": ..., "validation": ...} figures vs the user's model, mismatches) of a .keras row. ``val_probs``
    None (the user's model itself): figures only. Otherwise held to the run's budget like every shipped file:
    missed on validation, else a test miss (:func:`total_check`), as the accuracy budget treats ``model.keras``."""
    from deploykit.pipeline.confirm import TEST, VALIDATION

    if not _classifier(test_probs, ctx) or nll(test_probs, ctx.data.y_test) is None:
        return {}, []
    ref, limit = _reference(ctx), ctx.config.validate.max_nll_increase
    test, test_missed = total_check(TEST, test_probs, ref.test, ctx.data.y_test, limit, confirming=True)
    found = {"test": figures(test_probs, ref.test, ctx.data.y_test) | test}
    if val_probs is None:
        return found, []
    val, missed = total_check(VALIDATION, val_probs, ref.val, ctx.data.y_val, limit)
    found["validation"] = figures(val_probs, ref.val, ctx.data.y_val) | val
    return found, (missed or test_missed) if ctx.config.validate.enabled else []


def held_nll(probabilities, ctx) -> tuple[dict, list]:
    """(figures, mismatches) of an MC or ensemble file's test mean ``probabilities`` against the run's budget: held to
    it on test by the point estimate, as its accuracy is (its choices, temperature and threshold, were made on
    validation; its figures are measured once, on test). Nothing for a regressor or outputs that are not [N, C]."""
    from deploykit.pipeline.confirm import TEST

    y = ctx.data.y_test
    if not _classifier(probabilities, ctx) or nll(probabilities, y) is None:
        return {}, []
    ref, limit = _reference(ctx), ctx.config.validate.max_nll_increase
    found, missed = total_check(TEST, probabilities, ref.test, y, limit, confirming=True, decided=False)
    return figures(probabilities, ref.test, y) | found, missed if ctx.config.validate.enabled else []


def _classifier(probabilities, ctx) -> bool:
    """Whether the run's rows carry an NLL: a classifier with one output, its probabilities measured."""
    layout = getattr(ctx.data, "layout", None)
    several = layout is not None and layout.several_outputs
    return ctx.metric.value == "accuracy" and probabilities is not None and not several


def _reference(ctx):
    """The user's model's main outputs on validation and test (computed once per run when the context holds them)."""
    from deploykit.pipeline.confirm import reference_outputs

    return ctx.reference or reference_outputs(ctx.original, ctx.data, ctx.kind)
