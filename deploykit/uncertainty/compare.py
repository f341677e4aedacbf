"""Deterministic versus MC Dropout predictions: calibration, and whether uncertainty flags errors.

A :class:`ComparisonReport` made by :func:`deploykit.uncertainty.bundle.mc_bundle` also carries what
the shipped MC model was given after the export: the temperature (calibration before / after), the
selective threshold (coverage reached on the test split) and the OOD figures. ``deploykit mc`` and
``deploykit optimize`` both write it, so both reports say the same thing the same way.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from deploykit.errors import DataError, UsageError
from deploykit.records import Record
from deploykit.uncertainty.calibration import (
    CalibrationReport,
    calibration,
    check_labels_and_probs,
    reliability_diagram,
)
from deploykit.uncertainty.conformal import ConformalReport, conformal_markdown
from deploykit.uncertainty.ood import OODRow
from deploykit.uncertainty.predictor import UncertaintyResult
from deploykit.uncertainty.regression import STD_FLOOR, RegressionReport, StdScaleReport
from deploykit.uncertainty.selective import SelectiveResult, SelectiveThreshold
from deploykit.uncertainty.temperature import TemperatureReport

DEFAULT_FRACTION = 0.1
MC_DROPOUT = "MC Dropout"  # ComparisonReport.method of an MC model: T counts its samples
DEEP_ENSEMBLE = "deep ensemble"  # ... of a deep ensemble: T counts its members


@dataclass
class UncertainErrors(Record):
    """Error rate among the most uncertain predictions (by one measure) against the rest."""

    predictions: str  # "deterministic" or "mc"
    measure: str  # the uncertainty ranked: "entropy", "predictive_entropy", "mutual_information"
    uncertain_count: int
    uncertain_error: float
    rest_error: float  # NaN when nothing is left

    @property
    def ratio(self) -> float:
        """How many times more often the uncertain predictions are wrong."""
        return self.uncertain_error / self.rest_error if self.rest_error > 0 else math.inf


@dataclass
class SelectiveReport(Record):
    """The threshold chosen on the validation split and what it gives on the test split."""

    chosen: SelectiveThreshold
    test: SelectiveResult


@dataclass
class ComparisonReport(Record):
    """Deterministic vs MC Dropout on one labelled set."""

    count: int
    samples: int
    fraction: float
    deterministic: CalibrationReport
    mc: CalibrationReport
    uncertain: list[UncertainErrors] = field(default_factory=list)
    temperature: TemperatureReport | None = None  # the MC model's post-hoc temperature (None: off)
    selective: SelectiveReport | None = None  # the abstain threshold (None: no target given)
    ood: list[OODRow] | None = None  # one row per measure (None: no OOD data given)
    plots: list[str] = field(default_factory=list)  # PNG file names, beside the model
    conformal: ConformalReport | None = None  # the prediction sets (None: no --conformal)
    method: str = MC_DROPOUT  # what ``mc`` is: MC_DROPOUT, or DEEP_ENSEMBLE (``samples`` then counts its members)

    def to_markdown(self) -> str:
        d, m = self.deterministic, self.mc
        lines = [
            f"# Deterministic vs {self.method} ({self.count} instances, {_draws(self.method, self.samples)})",
            "",
            f"| metric | deterministic | {self.method} |",
            "|---|---:|---:|",
            f"| accuracy | {d.accuracy:.4f} | {m.accuracy:.4f} |",
            f"| NLL | {d.nll:.4f} | {m.nll:.4f} |",
            f"| Brier | {d.brier:.4f} | {m.brier:.4f} |",
            f"| ECE ({d.bins} bins) | {d.ece:.4f} | {m.ece:.4f} |",
            "",
            f"## Error rate among the {self.fraction:.0%} most uncertain predictions vs the rest",
            "",
            "| predictions | uncertainty | most uncertain (n) | error there | error in the rest | ratio |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for u in self.uncertain:
            shown = "ensemble" if u.predictions == "mc" and self.method == DEEP_ENSEMBLE else u.predictions
            lines.append(
                f"| {shown} | {u.measure} | {u.uncertain_count} | {u.uncertain_error:.4f} | "
                f"{u.rest_error:.4f} | {u.ratio:.2f} |"
            )
        lines += extra_markdown(self.to_dict())
        return "\n".join(lines) + "\n"


@dataclass
class RegressionComparison(Record):
    """Deterministic vs MC Dropout regression on one labelled set (the test split), with what was added after."""

    count: int
    samples: int
    deterministic_rmse: float
    deterministic_mae: float
    mc: RegressionReport  # the shipped model (after its std scale)
    std_scale: StdScaleReport | None = None  # the variance calibration (None: off)
    selective: SelectiveReport | None = None  # the abstain threshold on the interval width (None: no target given)
    ood: list[OODRow] | None = None  # the interval width as the OOD measure (None: no OOD data given)
    plots: list[str] = field(default_factory=list)
    conformal: ConformalReport | None = None  # the conformal intervals (None: no --conformal)
    method: str = MC_DROPOUT  # as :attr:`ComparisonReport.method`

    def to_markdown(self) -> str:
        return "\n".join(regression_markdown(self.to_dict())) + "\n"


def regression_markdown(report: dict) -> list[str]:
    """Markdown lines of a :class:`RegressionComparison` given as JSON values (``mc`` and ``optimize`` print one
    text)."""
    m, method = report["mc"], report.get("method", MC_DROPOUT)
    lines = [
        f"# Deterministic vs {method} regression ({report['count']} instances, {_draws(method, report['samples'])})",
        "",
        f"| metric (test split) | deterministic | {method} |",
        "|---|---:|---:|",
        f"| RMSE | {_num(report['deterministic_rmse'])} | {_num(m['rmse'])} |",
        f"| MAE | {_num(report['deterministic_mae'])} | {_num(m['mae'])} |",
        f"| Gaussian NLL (nats per target value) | — | {_num(m['nll'])} |",
        f"| coverage of the central 90% interval | — | {_pct(m['coverage_90'])} |",
        f"| coverage of the central 95% interval | — | {_pct(m['coverage_95'])} |",
        f"| mean width of the 90% / 95% interval | — | {_num(m['width_90'])} / {_num(m['width_95'])} |",
        "",
        f"Intervals are mean ± z·std (z = 1.645 and 1.960); a calibrated model covers 90% and 95%. The NLL "
        f"floors std at {STD_FLOOR:g}. {m['targets']} target(s).",
    ]
    return lines + extra_markdown(report)


def compare(
    y_true,
    deterministic_probs,
    mc: UncertaintyResult,
    fraction: float = DEFAULT_FRACTION,
    plot_path: str | os.PathLike | None = None,
    method: str = MC_DROPOUT,
) -> ComparisonReport:
    """Compare deterministic probabilities [N, C] with an MC (or ensemble: ``method``) result on labels ``y_true``.

    With ``plot_path`` both reliability diagrams go side by side into one PNG.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"fraction must be in (0, 1), got {fraction}")
    y, det = check_labels_and_probs(y_true, deterministic_probs)
    if mc.mean.shape != det.shape:
        raise DataError(
            f"MC mean has shape {list(mc.mean.shape)} but the deterministic probabilities {list(det.shape)}"
        )
    det_report = calibration(y, det)
    mc_report = calibration(y, mc.mean)
    det_wrong = det.argmax(axis=1) != y
    mc_wrong = np.asarray(mc.predicted_class) != y
    plogp = det * np.log(np.maximum(det, np.finfo(np.float64).tiny))
    uncertain = [
        _uncertain_errors("deterministic", "entropy", -plogp.sum(axis=1), det_wrong, fraction),
        _uncertain_errors("mc", "predictive_entropy", mc.predictive_entropy, mc_wrong, fraction),
        _uncertain_errors("mc", "mutual_information", mc.mutual_information, mc_wrong, fraction),
    ]
    if plot_path is not None:
        reliability_diagram({"deterministic": det_report, f"{method} (T={mc.samples})": mc_report}, plot_path)
    return ComparisonReport(
        count=len(y),
        samples=mc.samples,
        fraction=fraction,
        deterministic=det_report,
        mc=mc_report,
        uncertain=uncertain,
        method=method,
    )


def _uncertain_errors(
    predictions: str, measure: str, uncertainty, wrong: np.ndarray, fraction: float
) -> UncertainErrors:
    order = np.argsort(-np.asarray(uncertainty, dtype=np.float64), kind="stable")
    k = max(1, math.ceil(fraction * len(order)))
    top, rest = wrong[order[:k]], wrong[order[k:]]
    return UncertainErrors(predictions, measure, k, float(top.mean()), float(rest.mean()) if len(rest) else math.nan)


def extra_markdown(report: dict) -> list[str]:
    """Markdown lines for the temperature, selective and OOD parts of a comparison given as JSON values.

    From the JSON form so that ``optimize``'s report.md (built from report.json) and ``deploykit mc``'s
    comparison.md print one text.
    """
    lines: list[str] = []
    short = "MC" if report.get("method", MC_DROPOUT) == MC_DROPOUT else report["method"]
    t = report.get("temperature")
    if t:
        fit, b, a = t["fit"], t["before"], t["after"]
        lines += [
            "",
            f"## Temperature scaling (T = {fit['temperature']:.4f}, {fit['placement']}, "
            f"fitted on {fit['count']} validation instances)",
            "",
            f"| metric (test split) | {short} before | {short} after |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {name} | {_num(b.get(key))} | {_num(a.get(key))} |"
            for name, key in (
                ("accuracy", "accuracy"),
                ("NLL", "nll"),
                ("Brier", "brier"),
                (f"ECE ({b['bins']} bins)", "ece"),
            )
        ]
        lines += [
            "",
            f"Validation NLL {fit['nll_before']:.4f} -> {fit['nll_after']:.4f}"
            + (
                ""
                if not fit.get("alternatives")
                else " (placements tried: " + ", ".join(f"{k} {v:.4f}" for k, v in fit["alternatives"].items()) + ")"
            )
            + ". The model's `mean` output is the calibrated one.",
        ]
    v = report.get("std_scale")
    if v:
        fit, b, a = v["fit"], v["before"], v["after"]
        lines += [
            "",
            f"## Variance calibration (std × {fit['std_scale']:.4f}, fitted on {fit['count']} validation instances)",
            "",
            f"| metric (test split) | {short} before | {short} after |",
            "|---|---:|---:|",
            f"| Gaussian NLL | {_num(b['nll'])} | {_num(a['nll'])} |",
            f"| coverage of the 90% interval | {_pct(b['coverage_90'])} | {_pct(a['coverage_90'])} |",
            f"| coverage of the 95% interval | {_pct(b['coverage_95'])} | {_pct(a['coverage_95'])} |",
            f"| mean width of the 95% interval | {_num(b['width_95'])} | {_num(a['width_95'])} |",
            "",
            f"Validation NLL {fit['nll_before']:.4f} -> {fit['nll_after']:.4f}. The model's `std` output is the "
            "calibrated one (a Mul in the graph).",
        ]
    s = report.get("selective")
    if s:
        c, test = s["chosen"], s["test"]
        t = c["target"]
        target = (
            f"target accuracy {t['target_accuracy']:.2%}"
            if t.get("target_accuracy") is not None
            else f"target RMSE {t['target_rmse']:.6g}"
            if t.get("target_rmse") is not None
            else f"target coverage {t['target_coverage']:.2%}"
        )
        quality = (
            (lambda r: f"RMSE of kept {_num(r.get('rmse'))}")
            if c.get("rmse") is not None
            else (lambda r: f"accuracy of kept {_pct(r['accuracy'])}")
        )
        lines += [
            "",
            f"## Selective prediction ({target})",
            "",
            f"Abstain when {c['measure']} > {c['threshold']:.6g} (the `abstain` output). Validation: coverage "
            f"{_pct(c['coverage'])}, {quality(c)}{_bound(c)}. **Test: coverage {_pct(test['coverage'])} "
            f"({test['kept']} of {test['count']}), {quality(test)}.**",
        ]
    if report.get("conformal"):
        lines += conformal_markdown(report["conformal"])
    ood = report.get("ood")
    if ood:
        lines += [
            "",
            "## Out-of-distribution detection (test split vs the OOD data)",
            "",
            "| measure | AUROC | FPR at 95% TPR |",
            "|---|---:|---:|",
        ]
        lines += [f"| {r['measure']} | {r['auroc']:.4f} | {r['fpr_at_95_tpr']:.4f} |" for r in ood]
    return lines


def _bound(chosen: dict) -> str:
    """The finite-sample bound beside the validation point estimate (a threshold chosen with target_delta)."""
    target = chosen["target"]
    if target.get("target_coverage") is not None:
        return ""
    delta = target.get("target_delta")
    if delta is None:
        return " (point estimate: no finite-sample bound)"
    if chosen.get("bound") is None or math.isnan(chosen["bound"]):  # nothing kept: no cut's bound reaches the target
        return f"; no cut's bound at {1 - delta:.0%} reaches the target, so it abstains on every row"
    if chosen.get("rmse") is not None:
        return f"; upper bound {_num(chosen['bound'])} at {1 - delta:.0%} (Student-t, approximate)"
    return f"; lower bound {_pct(chosen['bound'])} at {1 - delta:.0%} (Clopper-Pearson, SGR)"


def _draws(method: str, samples: int) -> str:
    """``T = 30 samples`` (MC Dropout) or ``5 members`` (a deep ensemble)."""
    return f"{samples} members" if method == DEEP_ENSEMBLE else f"T = {samples} samples"


def _num(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"
