"""Calibration metrics on hand-computed cases, the reliability diagram, and the deterministic/MC comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.errors import DataError, UsageError
from deploykit.uncertainty import UncertaintyResult, calibration, compare

PNG = b"\x89PNG\r\n\x1a\n"


def test_hand_computed_case():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 1, 1, 1])
    r = calibration(y, probs)
    assert r.accuracy == pytest.approx(0.75)
    assert r.nll == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4)
    # (0.01+0.01) + (0.36+0.36) + (0.09+0.09) + (0.04+0.04) = 1.0 over 4 rows
    assert r.brier == pytest.approx(0.25)
    # one row per bin: mean of |correct - confidence| = (0.1 + 0.6 + 0.3 + 0.2) / 4
    assert r.ece == pytest.approx(0.3)
    assert sum(r.bin_count) == 4 and r.bins == 15


def test_ece_pools_rows_of_one_bin():
    # 0.91 and 0.93 share the bin (13/15, 14/15]; 0.55 is alone in (8/15, 9/15]
    probs = np.array([[0.91, 0.09], [0.93, 0.07], [0.45, 0.55]])
    y = np.array([0, 1, 1])
    r = calibration(y, probs)
    assert r.ece == pytest.approx((2 * abs(0.5 - 0.92) + abs(1 - 0.55)) / 3)
    assert r.bin_count[13] == 2 and r.bin_accuracy[13] == pytest.approx(0.5)
    assert calibration(y, probs, bins=1).ece == pytest.approx(abs(2 / 3 - (0.91 + 0.93 + 0.55) / 3))


def test_perfect_predictions():
    y = np.array([0, 2, 1])
    r = calibration(y, np.eye(3)[y])
    assert (r.accuracy, r.nll, r.brier, r.ece) == (1.0, 0.0, 0.0, 0.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_metric_ranges(n, c, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c), size=n)
    y = rng.integers(0, c, size=n)
    r = calibration(y, probs)
    assert 0 <= r.ece <= 1 and 0 <= r.brier <= 2 and r.nll >= 0 and 0 <= r.accuracy <= 1
    # ECE with one bin is |accuracy - mean confidence|
    assert calibration(y, probs, bins=1).ece == pytest.approx(abs(r.accuracy - probs.max(axis=1).mean()))


def test_reliability_diagram_is_written_atomically(tmp_path):
    path = tmp_path / "plots" / "reliability.png"
    r = calibration(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), plot_path=path)
    assert r.plot_path == path and path.read_bytes()[:8] == PNG
    assert [p.name for p in path.parent.iterdir()] == ["reliability.png"]


@pytest.mark.parametrize(
    "y, probs, error, match",
    [
        ([0, 1], [[2.0, -1.0], [0.5, 0.5]], DataError, "finite and non-negative"),
        ([0, 1], [[3.0, 1.0], [1.0, 2.0]], DataError, "sum to 1 per row"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], DataError, r"class ids in \[0, 1\]"),
        ([0], [[0.5, 0.5], [0.5, 0.5]], DataError, r"labels must have shape \[2\]"),
        ([0.0, 1.0], [[0.5, 0.5], [0.5, 0.5]], DataError, "labels must be integers"),
        ([0, 1], [0.5, 0.5], DataError, r"shape \[N, C\]"),
    ],
)
def test_bad_inputs(tmp_path, y, probs, error, match):
    with pytest.raises(error, match=match):
        calibration(np.array(y), np.array(probs), plot_path=tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_bad_bins():
    with pytest.raises(UsageError, match="bins must be an integer >= 1"):
        calibration(np.array([0]), np.array([[1.0, 0.0]]), bins=0)


def _result(mean: np.ndarray, entropy: np.ndarray, mutual: np.ndarray) -> UncertaintyResult:
    return UncertaintyResult(
        mean=mean,
        std=np.zeros_like(mean),
        predictive_entropy=entropy,
        mutual_information=mutual,
        predicted_class=mean.argmax(axis=1),
        samples=7,
    )


def test_compare(tmp_path):
    n = 20
    y = np.zeros(n, dtype=np.int64)
    deterministic = np.tile([0.9, 0.1], (n, 1))
    deterministic[:4] = [0.4, 0.6]  # the 4 errors are also the least confident
    mean = np.tile([0.8, 0.2], (n, 1))
    mean[[0, 5]] = [0.3, 0.7]  # 2 MC errors
    entropy = np.linspace(0, 1, n)
    entropy[[0, 5]] = [5.0, 4.0]  # ranked most uncertain
    report = compare(y, deterministic, _result(mean, entropy, -entropy), plot_path=tmp_path / "r.png")
    det, pe, mi = report.uncertain
    assert (det.uncertain_count, det.uncertain_error, det.rest_error) == (2, 1.0, 2 / 18)
    assert (pe.uncertain_error, pe.rest_error) == (1.0, 0.0) and pe.ratio == math.inf
    assert (mi.uncertain_error, mi.rest_error) == (0.0, 2 / 18)  # -entropy ranks the errors last
    assert report.deterministic.accuracy == pytest.approx(0.8) and report.mc.accuracy == pytest.approx(0.9)
    text = report.to_markdown()
    assert "| ECE (15 bins) |" in text and "| mc | predictive_entropy | 2 | 1.0000 | 0.0000 | inf |" in text
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG
    with pytest.raises(DataError, match="MC mean has shape"):
        compare(y[:3], deterministic[:3], _result(mean, entropy, entropy))
    with pytest.raises(UsageError, match="fraction must be in"):
        compare(y, deterministic, _result(mean, entropy, entropy), fraction=1.5)
