"""The ensemble ONNX model: K deploykit exports in one graph, checked against averaging the members ourselves."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deploykit.core.contract import OUTPUT_NAMES
from deploykit.errors import ModelLoadError, UsageError
from tests.uncertainty.support import run, session


@pytest.fixture(scope="module")
def member_models(digits):
    from deploykit.backend import set_seed
    from tests.helpers import build_dense

    models = []
    for seed in range(3):
        set_seed(10 + seed)
        models.append(build_dense(hidden=(16,), data=digits, bn=False))
    return models


#: (id(model), quantization, opset) -> (model, the exported file's bytes); the model is kept so its id names it
_EXPORTED: dict[tuple, tuple[object, bytes]] = {}


def _export(models, folder, quantizations, digits, opset=17):
    """``models`` exported to ``folder/member{k}.onnx``: each (model, quantization, opset) converted once in this
    process and its bytes written again for the next test (the conversions were most of this file's time); every
    test still gets files of its own."""
    from deploykit.export import export_onnx

    paths = []
    for k, (model, q) in enumerate(zip(models, quantizations)):
        path = folder / f"member{k}.onnx"
        done = _EXPORTED.get((id(model), q, opset))
        if done is not None and done[0] is model:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(done[1])
        else:
            export_onnx(model, path, opset=opset, quantization=q, calibration_data=digits if q else None)
            _EXPORTED[(id(model), q, opset)] = (model, path.read_bytes())
        paths.append(path)
    return paths


def _expected(paths, x):
    probs = np.stack([session(p).run(None, {"input": x})[0] for p in paths]).astype(np.float64)
    mean = probs.mean(0)

    def h(p):
        return -(p * np.log(np.maximum(p, np.finfo(np.float32).tiny))).sum(-1)

    return probs, {
        "mean": mean,
        "std": probs.std(0),
        "predictive_entropy": h(mean),
        "mutual_information": np.maximum(h(mean) - h(probs).mean(0), 0),
        "predicted_class": mean.argmax(1),
    }


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize(
    "quantizations", [(None, None, None), ("int8-dynamic", "int8-static", None)], ids=["float32", "int8_mixed"]
)
def test_one_graph_equals_the_members_averaged(tmp_path, member_models, digits, opset, quantizations):
    from deploykit.export.metadata import read_metadata
    from deploykit.uncertainty.ensemble import KIND_ENSEMBLE, MEMBERS_OUTPUT, export_ensemble_onnx

    paths = _export(member_models, tmp_path, quantizations, digits, opset)
    record = export_ensemble_onnx(paths, tmp_path / "ensemble.onnx", include_members=True)
    proto = onnx.load(str(record.path))
    onnx.checker.check_model(proto, full_check=True)
    assert record.opset == opset and read_metadata(proto).kind == KIND_ENSEMBLE
    assert [o.name for o in proto.graph.output][:5] == list(OUTPUT_NAMES)
    x = digits.x_test[:40]
    probs, want = _expected(paths, x)
    out = run(session(record.path), x)
    np.testing.assert_allclose(out[MEMBERS_OUTPUT], probs, atol=1e-6)
    for name in OUTPUT_NAMES[:4]:
        assert out[name].dtype == np.float32
        np.testing.assert_allclose(out[name], want[name], atol=1e-6, err_msg=name)
    assert out["predicted_class"].dtype == np.int64
    assert np.array_equal(out["predicted_class"], want["predicted_class"])


def test_members_at_other_opsets_are_converted(tmp_path, member_models, digits):
    from deploykit.uncertainty.ensemble import build_ensemble

    (tmp_path / "b").mkdir()
    paths = _export(member_models[:1], tmp_path, [None], digits, 13) + _export(
        member_models[1:2], tmp_path / "b", [None], digits, 17
    )
    proto = build_ensemble(paths)
    assert next(o.version for o in proto.opset_import if o.domain == "") == 17
    _, want = _expected(paths, digits.x_test[:8])
    np.testing.assert_allclose(run(session(proto), digits.x_test[:8])["mean"], want["mean"], atol=1e-6)


def test_mismatched_or_missing_members_are_refused(tmp_path, member_models, digits):
    from deploykit.backend import set_seed
    from deploykit.uncertainty.ensemble import build_ensemble
    from tests.helpers import build_dense

    paths = _export(member_models[:1], tmp_path, [None], digits)
    with pytest.raises(UsageError, match="at least 2 members"):
        build_ensemble(paths)
    with pytest.raises(ModelLoadError, match="no such file"):
        build_ensemble([paths[0], tmp_path / "nope.onnx"])
    set_seed(0)
    (tmp_path / "o").mkdir()
    other = _export([build_dense(hidden=(8,), classes=4)], tmp_path / "o", [None], digits)
    with pytest.raises(ModelLoadError, match="members differ"):
        build_ensemble([paths[0], other[0]])


def test_temperature_and_abstain_compose_on_an_ensemble(tmp_path, member_models, digits):
    from deploykit.uncertainty.ensemble import build_ensemble
    from deploykit.uncertainty.measures import Measure, uncertainties
    from deploykit.uncertainty.selective import SelectiveTarget, add_abstain, choose_threshold
    from deploykit.uncertainty.temperature import Placement, apply_mc_temperature, fit_mc_temperature, scale_probs

    paths = _export(member_models, tmp_path, [None, None, None], digits)
    probs, want = _expected(paths, digits.x_val)
    fit = fit_mc_temperature(digits.y_val, probs, placements=(Placement.MEAN,))
    proto = build_ensemble(paths)
    apply_mc_temperature(proto, fit)
    val = run(session(proto), digits.x_val)
    np.testing.assert_allclose(val["mean"], scale_probs(want["mean"], fit.temperature), atol=1e-5)
    u = uncertainties(val["mean"], val["mutual_information"])[Measure.MUTUAL_INFORMATION]
    chosen = choose_threshold(
        digits.y_val,
        val["predicted_class"],
        u,
        Measure.MUTUAL_INFORMATION,
        SelectiveTarget(target_accuracy=None, target_coverage=0.7),
    )
    add_abstain(proto, chosen)
    out = run(session(proto), digits.x_test)
    assert np.array_equal(out["abstain"], out["mutual_information"] > chosen.threshold)
    assert 0.5 < 1 - run(session(proto), digits.x_val)["abstain"].mean() < 0.9


def test_per_member_temperature_scales_every_member_before_the_average(tmp_path, member_models, digits):
    from deploykit.uncertainty.ensemble import MEMBERS_OUTPUT, build_ensemble
    from deploykit.uncertainty.temperature import (
        Placement,
        TemperatureFit,
        apply_mc_temperature,
        fit_mc_temperature,
        scale_probs,
    )

    paths = _export(member_models, tmp_path, [None, "int8-dynamic", None], digits)
    probs, _ = _expected(paths, digits.x_val)
    fit = fit_mc_temperature(digits.y_val, probs)  # per member or on the mean, by validation NLL
    assert set(fit.alternatives) == {"per_sample", "mean"}
    per_member = TemperatureFit(1.7, Placement.PER_SAMPLE, 0, 0, 1)
    proto = build_ensemble(paths, include_members=True)
    apply_mc_temperature(proto, per_member)
    assert sum(n.op_type == "Div" for n in proto.graph.node) >= 3  # one Div before each member's softmax
    out = run(session(proto), digits.x_test)
    members, _ = _expected(paths, digits.x_test)
    calibrated = scale_probs(members, 1.7)
    np.testing.assert_allclose(out[MEMBERS_OUTPUT], calibrated, atol=1e-5)
    np.testing.assert_allclose(out["mean"], calibrated.mean(0), atol=1e-5)
    np.testing.assert_allclose(out["std"], calibrated.std(0), atol=1e-5)  # the spread of calibrated members
    with pytest.raises(UsageError, match="already holds a temperature"):
        apply_mc_temperature(proto, per_member)


@pytest.mark.parametrize("include_members", [True, False])
def test_uncertainty_predictor_runs_an_ensemble(tmp_path, member_models, digits, include_members):
    from deploykit.errors import UsageError
    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.ensemble import export_ensemble_onnx

    paths = _export(member_models, tmp_path, (None, None, None), digits)
    record = export_ensemble_onnx(paths, tmp_path / "ensemble.onnx", include_members=include_members)
    predictor = UncertaintyPredictor(record.path, threads=1)
    assert predictor.is_ensemble and predictor.default_samples == predictor.max_samples == 3
    x = digits.x_test[:25]
    result = predictor.predict(x, batch_size=10)  # three calls, concatenated like an MC model's
    probs, want = _expected(paths, x)
    assert result.samples == 3
    for name in OUTPUT_NAMES[:4]:
        np.testing.assert_allclose(getattr(result, name), want[name], atol=1e-6, err_msg=name)
    assert np.array_equal(result.predicted_class, want["predicted_class"])
    if include_members:
        np.testing.assert_allclose(result.sample_probabilities, probs, atol=1e-6)
    else:
        assert result.sample_probabilities is None
    with pytest.raises(UsageError, match="deep ensemble of 3 members: samples does not apply"):
        predictor.predict(x, samples=5)


def _mc_members(models, folder, samples, opset=17, include=True):
    from deploykit.uncertainty import MCConfig, export_mc_onnx

    paths = []
    for k, model in enumerate(models):
        path = folder / f"mc{k}.onnx"
        export_mc_onnx(model, path, config=MCConfig(samples=samples, include_samples=include, seed=k), opset=opset)
        paths.append(path)
    return paths


@pytest.mark.parametrize("opset", [13, 17])
def test_mc_dropout_inside_each_member_reduces_every_sample_of_every_member(tmp_path, member_models, digits, opset):
    """MC members (their sample outputs) give one [K*T, N, C] stack: the outputs reduce all K*T samples alike,
    each member draws its default T (its optional `samples` left empty), and the graph has no `samples` input."""
    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.ensemble import export_ensemble_onnx

    paths = _mc_members(member_models, tmp_path, samples=7, opset=opset)
    record = export_ensemble_onnx(paths, tmp_path / "ensemble.onnx", include_members=True)
    proto = onnx.load(str(record.path))
    assert [i.name for i in proto.graph.input] == ["input"]
    x = digits.x_test[:20]
    out = run(session(record.path), x)
    stacked = out["sample_probabilities"].astype(np.float64)
    assert stacked.shape == (3 * 7, 20, digits.num_classes)
    mean = stacked.mean(0)
    np.testing.assert_allclose(out["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(out["std"], stacked.std(0), atol=1e-6)
    entropy = -(mean * np.log(np.maximum(mean, 1e-30))).sum(1)
    np.testing.assert_allclose(out["predictive_entropy"], entropy, atol=1e-5)
    member_entropy = -(stacked * np.log(np.maximum(stacked, 1e-30))).sum(2).mean(0)
    np.testing.assert_allclose(out["mutual_information"], np.maximum(entropy - member_entropy, 0), atol=1e-5)
    assert (out["std"] > 0).any()  # the dropout samples differ
    # member k's samples are member k's: their mean approaches member k's deterministic output
    for k, model in enumerate(member_models):
        det = np.asarray(model(x, training=False))
        assert (
            np.abs(stacked[7 * k : 7 * (k + 1)].mean(0) - det).mean()
            < np.abs(
                stacked[7 * k : 7 * (k + 1)].mean(0) - np.asarray(member_models[(k + 1) % 3](x, training=False))
            ).mean()
        )
    result = UncertaintyPredictor(record.path).predict(x)
    np.testing.assert_allclose(result.mean, out["mean"], atol=0.2)  # fresh draws, same model
    with pytest.raises(ModelLoadError, match="some are MC Dropout models"):
        export_ensemble_onnx(
            [paths[0], _export(member_models[:1], tmp_path, (None,), digits)[0]], tmp_path / "mixed.onnx"
        )


def test_a_per_sample_temperature_divides_every_mc_members_logits(tmp_path, member_models, digits):
    """An ensemble of MC members takes the per-sample temperature: one Div before each member's per-sample
    softmax (behind its Reshape to [T, N, C]); at a huge T every sample, so the mean, is uniform."""
    from deploykit.uncertainty.ensemble import export_ensemble_onnx
    from deploykit.uncertainty.temperature import (
        Placement,
        TemperatureFit,
        per_sample_placement,
        write_with_temperature,
    )

    paths = _mc_members(member_models, tmp_path, samples=4)
    record = export_ensemble_onnx(paths, tmp_path / "ensemble.onnx")
    assert per_sample_placement(onnx.load(str(record.path)))
    write_with_temperature(record.path, tmp_path / "t.onnx", TemperatureFit(1e4, Placement.PER_SAMPLE, 1.0, 0.9, 10))
    proto = onnx.load(str(tmp_path / "t.onnx"))
    producer = {o: n for n in proto.graph.node for o in n.output}
    softmaxes = [n for n in proto.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == len(member_models) and all(producer[s.input[0]].op_type == "Div" for s in softmaxes)
    mean = run(session(proto), digits.x_test[:10])["mean"]
    np.testing.assert_allclose(mean, 1 / digits.num_classes, atol=1e-3)
