"""Selective prediction: the threshold meets its target on validation, and the in-graph abstain output agrees."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from deploykit.errors import ConfigError, DataError, UsageError
from deploykit.uncertainty.measures import Measure, uncertainties
from deploykit.uncertainty.selective import (
    ABSTAIN_ALL,
    SelectiveTarget,
    add_abstain,
    apply_threshold,
    choose_threshold,
    read_selective,
    risk_coverage,
)
from tests.uncertainty.support import run, session


def _errors_where_uncertain(n=2000, seed=0):
    """Uncertainty u ~ U(0, 1); a row is wrong with probability u**3 (errors pile up among uncertain rows)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 1, n)
    y = rng.integers(0, 5, n)
    wrong = rng.uniform(0, 1, n) < u**3
    return y, np.where(wrong, (y + 1) % 5, y), u


def test_target_accuracy_is_met_with_the_most_rows_kept():
    """The point rule (target_delta=None): the validation accuracy alone decides."""
    y, pred, u = _errors_where_uncertain()
    chosen = choose_threshold(y, pred, u, Measure.ENTROPY, SelectiveTarget(target_accuracy=0.95, target_delta=None))
    assert chosen.accuracy >= 0.95
    kept = u <= chosen.threshold
    assert chosen.coverage == pytest.approx(kept.mean())
    next_row = np.sort(u[~kept])[0]  # keeping one more row would miss the target
    more = u <= next_row
    assert (pred[more] == y[more]).mean() < 0.95 or more.sum() == len(u)
    assert 0.3 < chosen.coverage < 1.0


def test_target_coverage_keeps_at_least_that_share():
    y, pred, u = _errors_where_uncertain()
    chosen = choose_threshold(y, pred, u, Measure.MAX_PROB, SelectiveTarget(target_accuracy=None, target_coverage=0.8))
    assert 0.8 <= chosen.coverage < 0.81
    result = apply_threshold(y, pred, u, chosen.threshold)
    assert result.coverage == chosen.coverage and result.accuracy == chosen.accuracy


def test_unreachable_target_abstains_on_everything():
    y = np.array([0, 1, 2, 3])
    chosen = choose_threshold(y, (y + 1) % 4, np.array([0.1, 0.2, 0.3, 0.4]), Measure.ENTROPY)
    assert chosen.threshold == ABSTAIN_ALL and chosen.coverage == 0.0 and np.isnan(chosen.accuracy)


def test_ties_are_never_split():
    y = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 1, 0])
    u = np.array([0.1, 0.2, 0.2, 0.3])  # the wrong row ties with a right one
    chosen = choose_threshold(y, pred, u, Measure.ENTROPY, SelectiveTarget(target_accuracy=1.0, target_delta=None))
    assert chosen.coverage == 0.25


def test_risk_coverage_curve_ends_at_the_overall_error():
    y, pred, u = _errors_where_uncertain(500)
    coverage, risk = risk_coverage(y, pred, u)
    assert coverage[-1] == 1.0 and risk[-1] == pytest.approx((pred != y).mean())
    assert risk[: len(risk) // 4].mean() < risk[-1]  # the least uncertain quarter errs less


def test_bad_targets_and_inputs_are_refused():
    with pytest.raises(ConfigError, match="exactly one"):
        SelectiveTarget(target_accuracy=0.9, target_coverage=0.5)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        SelectiveTarget(target_accuracy=1.5)
    with pytest.raises(DataError, match="one length"):
        choose_threshold([0, 1], [0], [0.1, 0.2], Measure.ENTROPY)


@pytest.mark.parametrize("measure", [Measure.MAX_PROB, Measure.ENTROPY])
def test_abstain_output_of_a_deterministic_model(tmp_path, mc_plain_model, digits, measure):
    from deploykit.export import export_onnx

    path = tmp_path / "m.onnx"
    export_onnx(mc_plain_model, path)
    val = session(path).run(None, {"input": digits.x_val})[0]
    u = uncertainties(val)[measure]
    chosen = choose_threshold(
        digits.y_val, val.argmax(1), u, measure, SelectiveTarget(target_accuracy=None, target_coverage=0.5)
    )
    proto = onnx.load(str(path))
    add_abstain(proto, chosen)
    out = dict(
        zip(["probabilities", "abstain"], session(proto).run(["probabilities", "abstain"], {"input": digits.x_val}))
    )
    assert out["abstain"].dtype == np.bool_ and out["abstain"].shape == (len(digits.x_val),)
    assert np.array_equal(out["abstain"], u > chosen.threshold)
    stored = read_selective(proto)
    assert stored["measure"] == measure.value and stored["threshold"] == chosen.threshold
    assert (
        json.loads(next(p.value for p in proto.metadata_props if p.key == "deploykit.selective"))["target_coverage"]
        == 0.5
    )


@pytest.mark.parametrize("measure", [m for m in Measure if m is not Measure.INTERVAL_WIDTH])  # a classifier's measures
def test_abstain_output_of_an_mc_model_after_temperature(tmp_path, mc_model_path, digits, measure):
    from deploykit.uncertainty.temperature import Placement, TemperatureFit, apply_mc_temperature

    proto = onnx.load(str(mc_model_path))
    apply_mc_temperature(proto, TemperatureFit(1.3, Placement.PER_SAMPLE, 0.5, 0.4, 10))
    chosen = choose_threshold(
        np.zeros(3, np.int64),
        np.zeros(3, np.int64),
        np.array([0.1, 0.2, 0.3]),
        measure,
        SelectiveTarget(target_accuracy=None, target_coverage=0.6),
    )
    add_abstain(proto, chosen)
    out = run(session(proto), digits.x_test[:50])
    u = uncertainties(out["mean"], out["mutual_information"])[measure]
    assert np.array_equal(out["abstain"], u > chosen.threshold)
    onnx.save(proto, str(tmp_path / "m.onnx"))  # the Python API reads the decision too
    from deploykit.uncertainty import UncertaintyPredictor

    result = UncertaintyPredictor(tmp_path / "m.onnx").predict(digits.x_test[:50], batch_size=16)
    ref = uncertainties(result.mean, result.mutual_information)[measure]
    assert result.abstain.dtype == np.bool_ and np.array_equal(result.abstain, ref > chosen.threshold)
    assert UncertaintyPredictor(mc_model_path).predict(digits.x_test[:5]).abstain is None
    with pytest.raises(UsageError, match="already has an abstain"):
        add_abstain(proto, chosen)


def test_mutual_information_needs_an_mc_model(tmp_path, mc_plain_model):
    from deploykit.export import export_onnx

    export_onnx(mc_plain_model, tmp_path / "m.onnx")
    chosen = choose_threshold(
        np.zeros(2, np.int64), np.zeros(2, np.int64), np.array([0.1, 0.2]), Measure.MUTUAL_INFORMATION
    )
    with pytest.raises(UsageError, match="needs an MC"):
        add_abstain(onnx.load(str(tmp_path / "m.onnx")), chosen)


def test_risk_coverage_plot_is_a_png(tmp_path):
    from deploykit.uncertainty.selective import risk_coverage_plot

    y, pred, u = _errors_where_uncertain(300)
    path = risk_coverage_plot({"model": risk_coverage(y, pred, u)}, tmp_path / "rc.png", target_accuracy=0.99)
    assert path.read_bytes()[:4] == b"\x89PNG"
