"""Ensembles of logits classifiers and of regressors: the same head as the MC model, over members."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

from deploykit.core.contract import MEMBER_PREDICTIONS_OUTPUT, OUTPUT_NAMES
from deploykit.core.task import Task
from deploykit.errors import ModelLoadError
from tests.uncertainty.support import export_as_task, run, session

#: (id(model), task, opset) -> (model, the exported file's bytes); the model is kept so its id names it
_EXPORTED: dict[tuple, tuple[object, bytes]] = {}


def _member(model, path, task: Task, opset: int = 17):
    """``model`` exported as ``task`` to ``path``: each (model, task, opset) converted once in this process and its
    bytes written again for the next test that asks (the tests only read the members); every test gets its own file."""
    done = _EXPORTED.get((id(model), task, opset))
    if done is not None and done[0] is model:
        path.write_bytes(done[1])
        return path
    export_as_task(model, path, task, opset)
    _EXPORTED[(id(model), task, opset)] = (model, path.read_bytes())
    return path


@functools.cache
def _models(outputs: int):
    """Three small members (seeds 20-22), built once per process: the tests only call and export them."""
    from deploykit.backend import keras, set_seed

    models = []
    for seed in range(3):
        set_seed(20 + seed)
        models.append(
            keras.Sequential(
                [keras.Input(shape=(8,)), keras.layers.Dense(12, activation="relu"), keras.layers.Dense(outputs)]
            )
        )
    return tuple(models)


@pytest.mark.parametrize("opset", [13, 18])
def test_regression_members_give_mean_and_std_per_target(tmp_path, opset):
    from deploykit.export.metadata import read_metadata
    from deploykit.onnx.graph_ops import get_prop
    from deploykit.uncertainty.ensemble import export_ensemble_onnx

    models = _models(2)
    paths = [_member(m, tmp_path / f"m{k}.onnx", Task.REGRESSION, opset) for k, m in enumerate(models)]
    record = export_ensemble_onnx(paths, tmp_path / "ensemble.onnx", include_members=True)
    proto = onnx.load(str(record.path))
    assert [o.name for o in proto.graph.output] == ["mean", "std", MEMBER_PREDICTIONS_OUTPUT]
    assert record.task is Task.REGRESSION and record.opset == opset and read_metadata(proto).class_names == []
    assert '"regression"' in get_prop(proto, "deploykit.task")
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    out = run(session(record.path), x)
    members = np.stack([np.asarray(m(x, training=False), np.float64) for m in models])
    assert out[MEMBER_PREDICTIONS_OUTPUT].shape == (3, 20, 2)
    assert np.abs(out["mean"] - members.mean(0)).max() <= 1e-5
    assert np.abs(out["std"] - members.std(0)).max() <= 1e-5 and out["std"].min() > 0


def test_logits_members_are_averaged_as_probabilities(tmp_path):
    from deploykit.uncertainty.ensemble import export_ensemble_onnx

    models = _models(3)
    paths = [_member(m, tmp_path / f"m{k}.onnx", Task.CLASSIFICATION) for k, m in enumerate(models)]
    record = export_ensemble_onnx(paths, tmp_path / "ensemble.onnx")
    x = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    out = run(session(record.path), x)
    assert list(out) == list(OUTPUT_NAMES) and record.task is Task.CLASSIFICATION
    logits = np.stack([np.asarray(m(x, training=False), np.float64) for m in models])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert np.abs(out["mean"] - probs.mean(0)).max() <= 1e-5
    assert np.array_equal(out["predicted_class"], probs.mean(0).argmax(1))


def test_a_classifier_and_a_regressor_do_not_mix(tmp_path):
    from deploykit.uncertainty.ensemble import build_ensemble

    regressors = _models(2)
    a = _member(regressors[0], tmp_path / "a.onnx", Task.REGRESSION)
    b = _member(regressors[1], tmp_path / "b.onnx", Task.CLASSIFICATION)
    with pytest.raises(ModelLoadError, match="some are classifiers, some regressors"):
        build_ensemble([a, b])


def test_uncertainty_predictor_runs_a_regression_ensemble(tmp_path):
    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.ensemble import export_ensemble_onnx

    models = _models(2)
    paths = [_member(m, tmp_path / f"m{k}.onnx", Task.REGRESSION) for k, m in enumerate(models)]
    record = export_ensemble_onnx(paths, tmp_path / "ensemble.onnx", include_members=True)
    predictor = UncertaintyPredictor(record.path)
    x = np.random.default_rng(2).normal(size=(7, 8)).astype(np.float32)
    result = predictor.predict(x, batch_size=3)
    members = np.stack([np.asarray(m(x, training=False), np.float64) for m in models])
    assert predictor.is_ensemble and result.task is Task.REGRESSION and result.samples == 3
    assert result.predicted_class is None and result.sample_probabilities is None
    np.testing.assert_allclose(result.sample_predictions, members, atol=1e-5)  # [K, N, targets], batches joined
    np.testing.assert_allclose(result.mean, members.mean(0), atol=1e-5)


@pytest.mark.slow  # trains three regressors
def test_a_regression_ensemble_bundle_stores_its_std_scale_and_interval_threshold(tmp_path, diabetes):
    """ensemble_bundle on regressors: the std scale fitted on the validation split (a Mul on `std`), the
    interval-width `abstain` for a target RMSE, and the regression comparison against the first member."""
    from deploykit.backend import keras, set_seed
    from deploykit.uncertainty import SelectiveTarget, UncertaintyPredictor
    from deploykit.uncertainty.bundle import ensemble_bundle

    paths = []
    for k in range(3):
        set_seed(40 + k)
        model = keras.Sequential(
            [keras.Input(shape=(10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
        )
        model.compile(keras.optimizers.Adam(0.05), "mse")
        model.fit(diabetes.x_train, diabetes.y_train, epochs=30, verbose=0)
        paths.append(_member(model, tmp_path / f"m{k}.onnx", Task.REGRESSION))
    target = SelectiveTarget(target_accuracy=None, target_coverage=0.7)
    bundle = ensemble_bundle(paths, diabetes, tmp_path / "ensemble.onnx", target=target)
    c = bundle.comparison
    assert c.method == "deep ensemble" and c.samples == 3 and c.std_scale.fit.std_scale > 1  # members agree too much
    assert c.std_scale.after.nll < c.std_scale.before.nll and c.selective.chosen.coverage >= 0.7
    result = UncertaintyPredictor(bundle.export.path).predict(diabetes.x_test)
    assert result.abstain is not None and result.abstain.mean() == pytest.approx(1 - c.selective.test.coverage)
    member = run(session(paths[0]), diabetes.x_test)["prediction"]
    assert c.deterministic_rmse == pytest.approx(
        float(np.sqrt(np.mean((member[:, 0] - diabetes.y_test) ** 2))), rel=1e-5
    )
    assert "Deterministic vs deep ensemble regression" in c.to_markdown()
    from deploykit.errors import UsageError

    with pytest.raises(UsageError, match="a regressor takes target_rmse or target_coverage"):
        ensemble_bundle(paths, diabetes, tmp_path / "e2.onnx", target=SelectiveTarget(target_accuracy=0.9))
    assert not (tmp_path / "e2.onnx").exists()  # refused before anything is written


def test_a_logits_ensemble_bundle_compares_against_the_first_members_probabilities(tmp_path):
    """Logits members give the ensemble probabilities; the baseline is member 0's `probabilities` output (not its
    logits), so the comparison's NLL is that of softmax(logits)."""
    from deploykit.core.evaluate import softmax
    from deploykit.data.dataset import Dataset
    from deploykit.uncertainty.bundle import ensemble_bundle

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 3))).argmax(1).astype(np.int64)
    data = Dataset("toy", x[:100], y[:100], x[100:200], y[100:200], x[200:], y[200:], ("a", "b", "c"))
    models = _models(3)
    paths = [_member(m, tmp_path / f"m{k}.onnx", Task.CLASSIFICATION) for k, m in enumerate(models)]
    bundle = ensemble_bundle(paths, data, tmp_path / "ensemble.onnx", temperature=False)
    probs = softmax(np.asarray(models[0](data.x_test, training=False), np.float64))
    nll = float(-np.log(probs[np.arange(len(data.y_test)), data.y_test]).mean())
    assert bundle.comparison.deterministic.nll == pytest.approx(nll, rel=1e-4)
    assert bundle.comparison.method == "deep ensemble" and bundle.comparison.samples == 3
