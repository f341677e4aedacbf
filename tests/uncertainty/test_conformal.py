"""Split conformal prediction: the coverage guarantee on scores of known distribution, and the ONNX outputs
equal to the numpy computation in onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.errors import ConfigError, DataError, UsageError
from deploykit.uncertainty.conformal import (
    ConformalConfig,
    ConformalMethod,
    calibrate_classifier,
    calibrate_regressor,
    class_scores,
    evaluate_sets,
    intervals,
    min_rows,
    prediction_sets,
    quantile,
)
from deploykit.uncertainty.conformal_graph import add_conformal, read_conformal


def _dirichlet_task(n: int, classes: int = 5, seed: int = 0):
    """Probabilities p ~ Dirichlet and labels drawn from p: a calibrated model, so every score is valid."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(classes, 0.6), size=n)
    y = np.minimum((rng.uniform(size=(n, 1)) > p.cumsum(axis=1)).sum(axis=1), classes - 1)
    return y, p


@settings(max_examples=25, deadline=None)
@given(n=st.integers(20, 300), alpha=st.sampled_from([0.05, 0.1, 0.2, 0.3]), seed=st.integers(0, 10_000))
def test_quantile_is_the_conformal_order_statistic(n, alpha, seed):
    """Exchangeable scores: a new score is <= q with probability exactly ceil((n+1)(1-alpha)) / (n+1)."""
    s = np.random.default_rng(seed).uniform(size=n)
    q = quantile(s, alpha)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if k > n:
        assert q == math.inf and n < min_rows(alpha)
    else:
        assert (s <= q).sum() >= k and (s < q).sum() < k
        assert 1 - alpha <= k / (n + 1) <= 1 - alpha + 1 / (n + 1)


@pytest.mark.parametrize("method", list(ConformalMethod)[:3])
@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_marginal_coverage_on_a_known_distribution(method, alpha):
    """Averaged over many calibration draws, coverage lies in [1 - alpha, 1 - alpha + 1/(n+1)] (+ MC noise)."""
    n, hits = 500, []
    for seed in range(40):
        y, p = _dirichlet_task(n + 2000, seed=seed)
        cal = calibrate_classifier(y[:n], p[:n], ConformalConfig(1 - alpha, method))
        hits.append(evaluate_sets(y[n:], prediction_sets(p[n:], cal)).coverage)
    m = calibrate_classifier(y[:n], p[:n], ConformalConfig(1 - alpha, method)).count
    assert 1 - alpha - 0.006 <= np.mean(hits) <= 1 - alpha + 1 / (m + 1) + 0.006


def test_aps_keeps_the_top_class_and_grows_with_ambiguity():
    p = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]])
    s = class_scores(p, ConformalMethod.APS)
    assert s[:, 0].tolist() == [0.0, 0.0]  # nothing ranks above the top class
    assert s[1].tolist() == pytest.approx([0.0, 0.4, 0.75])
    y, probs = _dirichlet_task(1000)
    cal = calibrate_classifier(y, probs, ConformalConfig(0.9, ConformalMethod.APS))
    sets = prediction_sets(probs, cal)
    assert sets[np.arange(len(probs)), probs.argmax(1)].all()
    assert sets.sum(1)[probs.max(1) < 0.4].mean() > sets.sum(1)[probs.max(1) > 0.8].mean()


def test_raps_tunes_on_rows_it_does_not_calibrate_on():
    y, p = _dirichlet_task(1000, classes=10)
    cal = calibrate_classifier(y, p, ConformalConfig(0.9))
    assert cal.method is ConformalMethod.RAPS and cal.tuning_count == 200 and cal.count == 800
    assert cal.lam in (0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5) and 1 <= cal.k_reg <= 10


def test_by_class_covers_every_class():
    """Class 0 is hard (its labels are noise): marginal sets under-cover it, Mondrian sets do not."""
    rng = np.random.default_rng(1)
    hits = {False: [], True: []}
    for seed in range(15):
        y, p = _dirichlet_task(4000, classes=4, seed=seed)
        noisy = rng.uniform(size=len(y)) < 0.3
        y = np.where(noisy & (y == 0), rng.integers(0, 4, len(y)), y)
        for by_class, found in hits.items():
            cal = calibrate_classifier(y[:2000], p[:2000], ConformalConfig(0.9, ConformalMethod.APS, by_class))
            hit = prediction_sets(p[2000:], cal)[np.arange(2000), y[2000:]]
            found.append([hit[y[2000:] == c].mean() for c in range(4)])
    assert np.mean(hits[True], axis=0).min() >= 0.9 - 0.01
    assert len(calibrate_classifier(y[:2000], p[:2000], ConformalConfig(0.9, ConformalMethod.APS, True)).threshold) == 4


def test_too_few_rows_are_refused_with_the_counts():
    y, p = _dirichlet_task(60, classes=3)
    y[:] = np.r_[np.zeros(55, int), np.ones(3, int), np.full(2, 2)]
    with pytest.raises(DataError, match=r"needs >= 19 .*class 1: 3, class 2: 2"):
        calibrate_classifier(y, p, ConformalConfig(0.95, ConformalMethod.APS, by_class=True))
    with pytest.raises(DataError, match="needs >= 19 calibration rows"):
        calibrate_classifier(y[:10], p[:10], ConformalConfig(0.95, ConformalMethod.LAC))
    with pytest.raises(ConfigError, match="conformal must be"):
        ConformalConfig(1.0)
    with pytest.raises(ConfigError, match="conformal_method"):
        ConformalConfig(0.9, "normalized")
    with pytest.raises(DataError, match="class indices"):
        calibrate_classifier(np.full(60, 7), p, ConformalConfig(0.9))


def test_normalized_intervals_cover_a_heteroscedastic_target():
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(60):
        std = rng.uniform(0.2, 3.0, size=(3000, 2))
        mean = rng.normal(size=(3000, 2))
        y = mean + rng.standard_t(5, size=(3000, 2)) * std  # heavier tails than the Gaussian the std suggests
        cal = calibrate_regressor(y[:1000], mean[:1000], std[:1000], coverage=0.9)
        lower, upper = intervals(mean[1000:], std[1000:], cal)
        hits.append(((y[1000:] >= lower) & (y[1000:] <= upper)).mean(axis=0))
    assert cal.method is ConformalMethod.NORMALIZED and len(cal.threshold) == 2
    assert (np.mean(hits, axis=0) >= 0.9 - 0.006).all() and (np.mean(hits, axis=0) <= 0.9 + 1 / 1001 + 0.006).all()
    absolute = calibrate_regressor(y[:1000], mean[:1000], coverage=0.8)
    assert absolute.method is ConformalMethod.ABSOLUTE


# --- the graph ---------------------------------------------------------------------------------------------------


def _softmax_model(classes: int = 6, opset: int = 13):
    """input [N, 4] -> MatMul -> Softmax -> probabilities: a deterministic deploykit-style classifier."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(4, classes)).astype(np.float32) * 2
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(proto, x, names):
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"input": x})))


@pytest.mark.parametrize("method", list(ConformalMethod)[:3])
@pytest.mark.parametrize("by_class", [False, True])
@pytest.mark.parametrize("opset", [13, 18])
def test_graph_sets_equal_numpy(method, by_class, opset):
    rng = np.random.default_rng(3)
    proto = _softmax_model(opset=opset)
    x = rng.normal(size=(3000, 4)).astype(np.float32)
    p = _run(proto, x, ["probabilities"])["probabilities"]
    y = np.minimum((rng.uniform(size=(len(p), 1)) > p.astype(np.float64).cumsum(axis=1)).sum(axis=1), 5)
    cal = calibrate_classifier(y[:1500], p[:1500], ConformalConfig(0.9, method, by_class))
    if method is ConformalMethod.RAPS:
        cal.lam = cal.lam or 0.05  # exercise the penalty nodes whatever the tuning chose
    add_conformal(proto, cal)
    out = _run(proto, x[1500:], ["probabilities", "prediction_set", "set_size"])
    assert out["prediction_set"].dtype == np.bool_ and out["prediction_set"].shape == (1500, 6)
    np.testing.assert_array_equal(out["prediction_set"], prediction_sets(out["probabilities"], cal))
    np.testing.assert_array_equal(out["set_size"], out["prediction_set"].sum(1))
    meta = read_conformal(proto)
    assert meta["method"] == method.value and meta["alpha"] == pytest.approx(0.1) and meta["n"] == cal.count
    assert meta["threshold"] == cal.threshold and meta["randomized"] is False
    with pytest.raises(UsageError, match="already has conformal outputs"):
        add_conformal(proto, cal)


def test_graph_intervals_equal_numpy():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["mean"]), helper.make_node("Abs", ["input"], ["std"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in ("mean", "std")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    cal = calibrate_regressor(x[:200] * 2, x[:200], np.abs(x[:200]), coverage=0.9)
    add_conformal(proto, cal)
    onnx.checker.check_model(proto)
    out = _run(proto, x, ["lower", "upper"])
    lower, upper = intervals(x, np.abs(x), cal)
    np.testing.assert_allclose(out["lower"], lower, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["upper"], upper, rtol=1e-6, atol=1e-6)
    assert read_conformal(proto)["method"] == "normalized"
