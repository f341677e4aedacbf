"""Split conformal prediction: sets of classes and intervals that hold the truth with a stated probability.

Why: a threshold on an uncertainty measure says nothing about unseen data; a split-conformal set does. Given
``n`` validation rows exchangeable with the future ones and any score s(x, y) (large = y looks wrong), the
threshold q = the ceil((n + 1)(1 - alpha))-th smallest validation score makes the set {y : s(x, y) <= q}
hold the true label with probability >= 1 - alpha, whatever the model (and, when scores do not tie, at
most 1 - alpha + 1 / (n + 1)). Everything here is numpy; :mod:`deploykit.uncertainty.conformal_graph` puts
the same computation into the ONNX graph.

Classification scores (on the model's probabilities ``p``, the MC / ensemble ``mean``):

- ``lac``: 1 - p_y (least ambiguous sets; a set may be empty);
- ``aps``: the *non-randomized* adaptive prediction set score, the mass of the classes ranked strictly above
  y: sum of p_j over p_j > p_y. It is the randomized APS score with its uniform draw u fixed at 0, so the graph
  needs no random number, the top class is always in the set, and calibrating and predicting with the same
  score keeps the guarantee exact;
- ``raps``: APS plus lambda * max(0, rank(y) - k_reg) (rank 1 = the top class), which penalizes long tails.
  k_reg is the (1 - alpha) quantile of the true labels' ranks and lambda the value of :data:`RAPS_LAMBDAS`
  with the smallest mean set size, both chosen on a seeded :data:`TUNING_SHARE` of the validation rows; the
  threshold is calibrated on the other rows only (choosing on the rows that calibrate would void the
  guarantee). lambda = 0 is APS.

Mondrian (``by_class``): one threshold per class from the validation rows of that class, so the coverage
holds for every class, not only on average; refused when a class has too few rows for a finite threshold.

An MC model's scores are random (each call draws new dropout masks): one independent draw per row keeps the
rows exchangeable, so the guarantee holds over the data and the draws alike. The score must not be fitted on the
calibration rows: the temperature (one scalar, fitted on the same validation split) is the one exception the
bundles make, a negligible dependence that ``--no-temperature`` removes.

Regression: the score is |y - mean| / std (normalized by the MC / ensemble std), or |y - prediction| for a
deterministic regressor, one threshold per target: [mean - q std, mean + q std] holds each target value with
probability >= 1 - alpha.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field

import numpy as np

from deploykit.configs import Config, boolean, choice, integer, number
from deploykit.errors import ConfigError, DataError
from deploykit.records import Record

RAPS_LAMBDAS = (0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
TUNING_SHARE = 0.2  # of the validation rows, to choose RAPS's lambda and k_reg (the rest calibrate)
STD_FLOOR = 1e-6  # the smallest std a normalized score divides by (targets' units)
SET_RULE = "prediction_set = the classes whose score <= threshold"
INTERVAL_RULE = "[lower, upper] = center -/+ threshold * scale"


class ConformalMethod(str, enum.Enum):
    """The conformal score (``conformal_method``); a regressor's is fixed by what it outputs."""

    RAPS = "raps"
    APS = "aps"
    LAC = "lac"
    NORMALIZED = "normalized"  # regression: |y - mean| / std (an MC or ensemble regressor)
    ABSOLUTE = "absolute"  # regression: |y - prediction| (a deterministic regressor)

    __str__ = str.__str__


CLASSIFICATION_METHODS = (ConformalMethod.RAPS, ConformalMethod.APS, ConformalMethod.LAC)


@dataclass(frozen=True)
class ConformalConfig(Config):
    """``conformal``: the coverage 1 - alpha, in (0, 1); ``conformal_method``: the classification score;
    ``conformal_by_class``: a threshold per class (Mondrian); ``seed``: the RAPS tuning split."""

    coverage: float = 0.9
    method: ConformalMethod = ConformalMethod.RAPS
    by_class: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        number("conformal", self.coverage, 0.0, 1.0, open_low=True, open_high=True)
        object.__setattr__(self, "method", choice(ConformalMethod, "conformal_method", self.method))
        if self.method not in CLASSIFICATION_METHODS:
            raise ConfigError(
                f"conformal_method is one of {', '.join(m.value for m in CLASSIFICATION_METHODS)}; "
                f"a regressor's score follows from its outputs"
            )
        boolean("conformal_by_class", self.by_class)
        integer("conformal seed", self.seed, 0)

    @property
    def alpha(self) -> float:
        return 1.0 - self.coverage


@dataclass
class Conformal(Record):
    """A calibrated conformal predictor: what the graph and ``deploykit.conformal`` hold.

    ``threshold``: one float, or one per class (``by_class``) or per target (regression). Rounded up to
    float32 so that the graph's comparison never drops a row the numpy rule keeps.
    """

    method: ConformalMethod
    alpha: float
    count: int  # calibration rows (n)
    threshold: float | list[float]
    by_class: bool = False
    lam: float = 0.0  # RAPS
    k_reg: int = 0  # RAPS
    tuning_count: int = 0  # RAPS: validation rows that chose lam and k_reg (not in count)
    class_counts: list[int] | None = None  # by_class: calibration rows per class
    seed: int = 0  # RAPS: the seed of the tuning split

    @property
    def coverage(self) -> float:
        return 1.0 - self.alpha

    @property
    def regression(self) -> bool:
        return self.method in (ConformalMethod.NORMALIZED, ConformalMethod.ABSOLUTE)

    def metadata_value(self) -> str:
        """The ``deploykit.conformal`` JSON: enough for an auditor to recompute every set from the outputs."""
        extra = (
            {"lambda": self.lam, "k_reg": self.k_reg, "tuning_count": self.tuning_count}
            if self.method is ConformalMethod.RAPS
            else {}
        )
        return json.dumps(
            {
                "method": self.method.value,
                "alpha": self.alpha,
                "coverage": self.coverage,
                "n": self.count,
                "threshold": self.threshold,
                "by_class": self.by_class,
                "randomized": False,
                "score": SCORES[self.method],
                "rule": INTERVAL_RULE if self.regression else SET_RULE,
                **extra,
                **({"class_counts": self.class_counts} if self.class_counts else {}),
            }
        )


SCORES = {
    ConformalMethod.LAC: "1 - p_y",
    ConformalMethod.APS: "sum of p_j over p_j > p_y (non-randomized APS, u = 0)",
    ConformalMethod.RAPS: "sum of p_j over p_j > p_y + lambda * max(0, rank_y - k_reg) (non-randomized, u = 0)",
    ConformalMethod.NORMALIZED: "|y - mean| / max(std, 1e-6), per target",
    ConformalMethod.ABSOLUTE: "|y - prediction|, per target",
}


# --- scores and thresholds --------------------------------------------------------------------------------------


def class_scores(probs, method: ConformalMethod, lam: float = 0.0, k_reg: int = 0) -> np.ndarray:
    """The score of every class of every row [N, C] (float64), as the graph computes it."""
    p = np.asarray(probs, np.float64)
    if method is ConformalMethod.LAC:
        return 1.0 - p
    above = p[:, None, :] > p[:, :, None]  # [n, y, j]: class j ranks strictly above class y
    scores = (above * p[:, None, :]).sum(axis=2)
    if method is ConformalMethod.RAPS and lam > 0:
        rank = above.sum(axis=2) + 1
        scores = scores + lam * np.maximum(rank - k_reg, 0)
    return scores


def quantile(scores, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest of ``scores``, or inf when that exceeds n."""
    s = np.sort(np.asarray(scores, np.float64).ravel())
    k = math.ceil((len(s) + 1) * (1 - alpha) - 1e-9)
    return math.inf if k > len(s) else float(s[k - 1])


def min_rows(alpha: float) -> int:
    """The fewest calibration rows that give a finite threshold at ``alpha``."""
    n = 1
    while math.ceil((n + 1) * (1 - alpha) - 1e-9) > n:
        n += 1
    return n


def _up32(value: float) -> float:
    """The smallest float32 >= value: the graph's threshold may only widen the numpy set, never narrow it."""
    v = np.float32(value)
    return float(v if float(v) >= value else np.nextafter(v, np.float32(np.inf)))


# --- classification ---------------------------------------------------------------------------------------------


def calibrate_classifier(y_val, probs_val, config: ConformalConfig = ConformalConfig()) -> Conformal:
    """Calibrate ``config.method`` on the validation labels and probabilities [N, C]; one DataError when the split
    is too small (for ``by_class``: the rows of each class, named with their counts)."""
    y, p = _check_classes(y_val, probs_val)
    alpha, method = config.alpha, config.method
    lam, k_reg, tuning = 0.0, 0, 0
    if method is ConformalMethod.RAPS:
        order = np.random.default_rng(config.seed).permutation(len(y))
        tuning = int(round(TUNING_SHARE * len(y)))
        lam, k_reg = _tune_raps(y[order[:tuning]], p[order[:tuning]], alpha)
        y, p = y[order[tuning:]], p[order[tuning:]]
    true_scores = class_scores(p, method, lam, k_reg)[np.arange(len(y)), y]
    if config.by_class:
        counts = np.bincount(y, minlength=p.shape[1])
        need = min_rows(alpha)
        short = [f"class {c}: {int(n)}" for c, n in enumerate(counts) if n < need]
        if short:
            raise DataError(
                f"conformal_by_class at coverage {config.coverage:g} needs >= {need} calibration rows of "
                f"every class; {', '.join(short)} (give more validation rows, a lower coverage, or drop "
                f"conformal_by_class)"
            )
        threshold = [_up32(quantile(true_scores[y == c], alpha)) for c in range(p.shape[1])]
        return Conformal(
            method, alpha, len(y), threshold, True, lam, k_reg, tuning, [int(n) for n in counts], config.seed
        )
    if len(y) < min_rows(alpha):
        raise DataError(
            f"conformal at coverage {1 - alpha:g} needs >= {min_rows(alpha)} calibration rows, the "
            f"validation split gives {len(y)}"
        )
    return Conformal(
        method, alpha, len(y), _up32(quantile(true_scores, alpha)), False, lam, k_reg, tuning, seed=config.seed
    )


def _tune_raps(y: np.ndarray, p: np.ndarray, alpha: float) -> tuple[float, int]:
    """RAPS's (lambda, k_reg) on the tuning rows: k_reg the (1 - alpha) quantile of the true labels' ranks (as in
    Angelopoulos et al. 2021), lambda the grid value with the smallest mean set size there (ties: the smaller)."""
    if len(y) < min_rows(alpha):
        return 0.0, 0
    rank = (p > p[np.arange(len(y)), y][:, None]).sum(axis=1) + 1
    k_reg = int(min(quantile(rank, alpha), p.shape[1]))
    best = None
    for lam in RAPS_LAMBDAS:
        scores = class_scores(p, ConformalMethod.RAPS, lam, k_reg)
        q = quantile(scores[np.arange(len(y)), y], alpha)
        size = float((scores <= q).sum(axis=1).mean())
        if best is None or size < best[0] - 1e-12:
            best = (size, lam)
    return best[1], k_reg


def prediction_sets(probs, conformal: Conformal) -> np.ndarray:
    """bool [N, C]: the classes whose score is at most the threshold (of their class when ``by_class``)."""
    p = np.asarray(probs, np.float64)
    scores = class_scores(p, conformal.method, conformal.lam, conformal.k_reg)
    return scores <= np.asarray(conformal.threshold, np.float64)


@dataclass
class ClassCoverage(Record):
    """One class's rows of a labelled split: how often the set held it and how large the sets were."""

    label: str
    count: int
    coverage: float
    mean_set_size: float


@dataclass
class SetResult(Record):
    """Prediction sets applied to a labelled split."""

    coverage: float  # share of rows whose set holds the true class
    mean_set_size: float
    empty: float  # share of rows with an empty set (lac only)
    singleton: float  # share of rows with exactly one class
    count: int
    per_class: list[ClassCoverage] = field(default_factory=list)


def evaluate_sets(y, sets, class_names=()) -> SetResult:
    """Coverage and set sizes of ``sets`` [N, C] against labels ``y``, overall and per true class."""
    y = np.asarray(y).astype(np.int64)
    sets = np.asarray(sets, bool)
    hit = sets[np.arange(len(y)), y]
    size = sets.sum(axis=1)
    names = list(class_names) or [str(c) for c in range(sets.shape[1])]
    per_class = [
        ClassCoverage(str(names[c]), int((y == c).sum()), float(hit[y == c].mean()), float(size[y == c].mean()))
        for c in range(sets.shape[1])
        if (y == c).any()
    ]
    return SetResult(
        float(hit.mean()), float(size.mean()), float((size == 0).mean()), float((size == 1).mean()), len(y), per_class
    )


def coverage_curve(
    y_val, probs_val, y_test, probs_test, conformal: Conformal, alphas=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
) -> list[tuple[float, float, float]]:
    """(alpha, test coverage, mean set size) for each alpha, recalibrated on the same validation rows with the
    shipped score (its lambda and k_reg); with the shipped threshold's own rows (RAPS: the non-tuning ones)."""
    y, p = _check_classes(y_val, probs_val)
    if conformal.method is ConformalMethod.RAPS and conformal.tuning_count:
        order = np.random.default_rng(conformal.seed).permutation(len(y))  # as calibrate_classifier split them
        y, p = y[order[conformal.tuning_count :]], p[order[conformal.tuning_count :]]
    true_scores = class_scores(p, conformal.method, conformal.lam, conformal.k_reg)[np.arange(len(y)), y]
    test_scores = class_scores(probs_test, conformal.method, conformal.lam, conformal.k_reg)
    yt = np.asarray(y_test).astype(np.int64)
    rows = []
    for alpha in alphas:
        q = quantile(true_scores, alpha)
        sets = test_scores <= q
        rows.append((float(alpha), float(sets[np.arange(len(yt)), yt].mean()), float(sets.sum(axis=1).mean())))
    return rows


def _check_classes(y, probs) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, np.float64)
    y = np.asarray(y)
    if p.ndim != 2 or y.shape != (len(p),) or len(p) == 0:
        raise DataError(
            f"conformal calibration needs labels [N] and probabilities [N, C] with N >= 1, got "
            f"{list(y.shape)} and {list(p.shape)}"
        )
    if not np.isfinite(p).all():
        raise DataError("probabilities must be finite")
    if y.dtype.kind not in "iu" or (y < 0).any() or (y >= p.shape[1]).any():
        raise DataError(f"labels must be class indices in [0, {p.shape[1] - 1}]")
    return y.astype(np.int64), p


# --- regression -------------------------------------------------------------------------------------------------


def calibrate_regressor(y_val, center_val, std_val=None, coverage: float = 0.9) -> Conformal:
    """One threshold per target: the conformal quantile of |y - center| / std (``std_val`` given: an MC or
    ensemble regressor) or of |y - center| (a deterministic one)."""
    from deploykit.uncertainty.regression import check_targets

    number("conformal", coverage, 0.0, 1.0, open_low=True, open_high=True)
    y, m, s = check_targets(y_val, center_val, std_val)
    alpha = 1.0 - coverage
    if len(y) < min_rows(alpha):
        raise DataError(
            f"conformal at coverage {coverage:g} needs >= {min_rows(alpha)} calibration rows, the "
            f"validation split gives {len(y)}"
        )
    scores = np.abs(y - m) / (1.0 if s is None else np.maximum(s, STD_FLOOR))
    method = ConformalMethod.ABSOLUTE if s is None else ConformalMethod.NORMALIZED
    return Conformal(method, alpha, len(y), [_up32(quantile(scores[:, k], alpha)) for k in range(y.shape[1])])


def intervals(center, std, conformal: Conformal) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) [N, K] of a calibrated regressor, as the graph computes them."""
    m = np.asarray(center, np.float64)
    m = m[:, None] if m.ndim == 1 else m
    q = np.asarray(conformal.threshold, np.float64)
    if conformal.method is ConformalMethod.ABSOLUTE:
        return m - q, m + q
    half = q * np.maximum(np.asarray(std, np.float64).reshape(m.shape), STD_FLOOR)
    return m - half, m + half


@dataclass
class IntervalResult(Record):
    """Conformal intervals applied to a labelled regression split."""

    coverage: float  # share of target values inside [lower, upper]
    mean_width: float  # targets' units
    count: int
    per_target: list[float] = field(default_factory=list)  # coverage of each target


def evaluate_intervals(y, lower, upper) -> IntervalResult:
    yy = np.asarray(y, np.float64)
    yy = yy[:, None] if yy.ndim == 1 else yy
    inside = (yy >= lower) & (yy <= upper)
    return IntervalResult(
        float(inside.mean()), float((upper - lower).mean()), len(yy), [float(c) for c in inside.mean(axis=0)]
    )


# --- the report -------------------------------------------------------------------------------------------------


@dataclass
class ConformalReport(Record):
    """What a bundle's conformal step gives: the calibration and the test split's coverage and sizes."""

    calibration: Conformal
    test: SetResult | IntervalResult
    curve: list[tuple[float, float, float]] = field(default_factory=list)  # (alpha, coverage, mean set size)


def conformal_markdown(report: dict) -> list[str]:
    """The report's section for a ``ConformalReport.to_dict()``."""
    c, t = report["calibration"], report["test"]
    target = 1 - c["alpha"]
    upper = target + 1 / (c["count"] + 1)
    method = c["method"] + (
        f" (lambda {c['lam']:g}, k_reg {c['k_reg']}, chosen on {c['tuning_count']} validation rows)"
        if c["method"] == "raps"
        else ""
    )
    lines = [
        "",
        f"## Conformal {'intervals' if 'per_target' in t else 'prediction sets'} "
        f"(coverage 1 - alpha = {target:.0%}, {method}{', per class' if c['by_class'] else ''})",
        "",
        f"Calibrated on {c['count']} validation rows (non-randomized, the thresholds are in the graph and in "
        f"`deploykit.conformal`). Guarantee: coverage >= {target:.2%} on exchangeable data; split-conformal "
        f"theory puts it below {upper:.2%} when scores do not tie.",
        "",
    ]
    if "per_target" in t:
        per_target = ", ".join(f"{v:.2%}" for v in t["per_target"])
        return lines + [
            f"**Test: coverage {t['coverage']:.2%} of {t['count']} rows, mean width "
            f"{t['mean_width']:.4g}** (per target: {per_target})."
        ]
    lines += [
        f"**Test: coverage {t['coverage']:.2%} of {t['count']} rows, mean set size {t['mean_set_size']:.3f}** "
        f"(singletons {t['singleton']:.1%}, empty {t['empty']:.1%}).",
        "",
        "| class | rows | coverage | mean set size |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['label']} | {r['count']} | {r['coverage']:.2%} | {r['mean_set_size']:.3f} |" for r in t["per_class"]
    ]
    if report.get("curve"):
        lines += ["", "| alpha | target coverage | test coverage | mean set size |", "|---:|---:|---:|---:|"]
        lines += [f"| {a:g} | {1 - a:.0%} | {cov:.2%} | {size:.3f} |" for a, cov, size in report["curve"]]
    return lines


def coverage_plot(curve, path) -> None:
    """The coverage-alpha curve (test coverage against the target 1 - alpha), written atomically."""
    from pathlib import Path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from deploykit.atomic import atomic_path

    fig = Figure(figsize=(5, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    targets = [1 - a for a, _, _ in curve]
    ax.plot(targets, [c for _, c, _ in curve], marker="o", label="test coverage")
    ax.plot([min(targets), 1], [min(targets), 1], linestyle="--", color="gray", label="target 1 - alpha")
    ax.set(xlabel="target coverage 1 - alpha", ylabel="empirical coverage (test split)", title="Conformal coverage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
