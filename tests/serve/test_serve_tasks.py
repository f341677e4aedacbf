"""Serving logits classifiers and regressors: `logits` + `probabilities`, `prediction`, and a regression MC model's
`mean`, `std`, `sample_predictions`, `abstain` and threshold, through tritonclient and v1 / v2 HTTP."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deploykit.core.contract import ABSTAIN_OUTPUT, INTERVAL_Z, SAMPLE_PREDICTIONS_OUTPUT, SELECTIVE_KEY
from deploykit.core.task import Task
from tests.serve.support import serving, triton_client
from tests.uncertainty.support import export_as_task

pytestmark = pytest.mark.slow  # starts a server process


def _model(outputs: int, seed: int, dropout: float = 0.0):
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    layers = [keras.Input(shape=(6,)), keras.layers.Dense(16, activation="relu")]
    layers += [keras.layers.Dropout(dropout)] if dropout else []
    return keras.Sequential([*layers, keras.layers.Dense(outputs)])


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def task_repo(tmp_path_factory, x):
    """``logits`` (a 3-class logits classifier), ``reg`` (a 2-target regressor), ``reg_mc`` (its MC model, seeded,
    with sample predictions, a std scale and an interval-width abstain threshold) and ``reg_ensemble`` (two
    regressors in one graph, with their predictions)."""
    from deploykit import export_mc_onnx
    from deploykit.uncertainty.regression import StdScaleFit, apply_std_scale
    from deploykit.uncertainty.selective import SelectiveTarget, add_abstain, choose_regression_threshold
    from tests.uncertainty.support import run, session

    repo = tmp_path_factory.mktemp("tasks")
    export_as_task(_model(3, 1), repo / "logits.onnx", Task.CLASSIFICATION, class_names=["a", "b", "c"])
    regressor = _model(2, 2, dropout=0.3)
    export_as_task(regressor, repo / "reg.onnx", Task.REGRESSION)
    from deploykit.uncertainty.mc_graph import MCConfig

    export_mc_onnx(
        regressor, repo / "reg_mc.onnx", config=MCConfig(samples=20, seed=3, include_samples=True, task=Task.REGRESSION)
    )
    proto = onnx.load(str(repo / "reg_mc.onnx"))
    apply_std_scale(proto, StdScaleFit(1.5, 2.0, 1.8, 100))
    first = run(session(proto), x)
    width = 2 * INTERVAL_Z * first["std"].astype(np.float64).mean(axis=1)
    chosen = choose_regression_threshold(
        first["mean"], first["mean"], width, SelectiveTarget(target_accuracy=None, target_coverage=0.5)
    )
    add_abstain(proto, chosen)
    onnx.save(proto, str(repo / "reg_mc.onnx"))
    from deploykit.uncertainty.ensemble import export_ensemble_onnx

    staging = tmp_path_factory.mktemp("members")
    members = [export_as_task(_model(2, seed), staging / f"m{seed}.onnx", Task.REGRESSION) for seed in (4, 5)]
    export_ensemble_onnx(members, repo / "reg_ensemble.onnx", include_members=True)
    return repo


@pytest.fixture(scope="module")
def task_server(task_repo, tmp_path_factory):
    with serving(task_repo, tmp_path_factory.mktemp("log") / "server.log") as process:
        yield process


@pytest.fixture(scope="module")
def triton(task_server):
    with triton_client(task_server.url) as c:
        yield c


def _local(repo, name, x):
    from tests.uncertainty.support import run, session

    return run(session(repo / f"{name}.onnx"), x)


def _infer(client, model, x, outputs=None):
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    requested = [httpclient.InferRequestedOutput(n, **kw) for n, kw in (outputs or [])] or None
    return client.infer(model, [tensor], outputs=requested)


def test_logits_classifier_answers_logits_and_probabilities(triton, task_repo, x):
    result = _infer(triton, "logits", x)
    want = _local(task_repo, "logits", x)
    assert np.array_equal(result.as_numpy("logits"), want["logits"])
    assert np.array_equal(result.as_numpy("probabilities"), want["probabilities"])
    labels = _infer(triton, "logits", x, [("probabilities", {"class_count": 1})]).as_numpy("probabilities")
    names = np.array(["a", "b", "c"])[want["probabilities"].argmax(1)]
    assert [row[0].decode().split(":")[-1] for row in labels] == names.tolist()
    assert triton.get_model_metadata("logits")["parameters"]["task"] == "classification"


def test_regressor_answers_prediction(triton, task_server, task_repo, x):
    import httpx

    result = _infer(triton, "reg", x)
    assert np.array_equal(result.as_numpy("prediction"), _local(task_repo, "reg", x)["prediction"])
    meta = triton.get_model_metadata("reg")
    assert meta["parameters"]["task"] == "regression" and meta["parameters"]["class_labels"] == []
    refused = httpx.post(
        f"{task_server.base}/v2/models/reg/infer",
        timeout=60,
        json={
            "inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": x[0].tolist()}],
            "outputs": [{"name": "prediction", "parameters": {"classification": 1}}],
        },
    )
    assert refused.status_code == 400  # a regressor's values are not class scores


def test_regression_mc_answers_mean_std_abstain_and_threshold(triton, task_repo, x):
    import json

    result = _infer(triton, "reg_mc", x)
    mean, std, abstain = (result.as_numpy(n) for n in ("mean", "std", ABSTAIN_OUTPUT))
    samples = result.as_numpy(SAMPLE_PREDICTIONS_OUTPUT)
    assert (
        mean.shape == std.shape == (30, 2) and samples.shape == (30, 30, 2) and std.min() > 0
    )  # the server's default samples
    assert np.abs(mean - samples.mean(0)).max() <= 1e-5
    assert np.abs(std - 1.5 * samples.std(0)).max() <= 1e-4  # the stored std scale
    record = json.loads(
        next(p.value for p in onnx.load(str(task_repo / "reg_mc.onnx")).metadata_props if p.key == SELECTIVE_KEY)
    )
    parameters = result.get_response()["parameters"]
    assert parameters["abstain_threshold"] == record["threshold"] and parameters["abstain_measure"] == "interval_width"
    assert np.array_equal(abstain, 2 * INTERVAL_Z * std.mean(axis=1) > record["threshold"])
    meta = triton.get_model_metadata("reg_mc")["parameters"]
    assert meta["task"] == "regression" and meta["std_scale"]["std_scale"] == 1.5
    few = _infer(triton, "reg_mc", x[:2], [("mean", {}), ("std", {})])
    assert [o["name"] for o in few.get_response()["outputs"]] == ["mean", "std"]


def test_regression_mc_v1_rows(task_server, task_repo, x):
    import httpx

    response = httpx.post(
        f"{task_server.base}/v1/models/reg_mc:predict",
        json={"instances": x[:5].tolist(), "parameters": {"samples": 7}},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert len(rows) == 5 and all(len(r["mean"]) == 2 and len(r["std"]) == 2 for r in rows)
    assert all(len(r[SAMPLE_PREDICTIONS_OUTPUT]) == 7 for r in rows)  # this row's 7 samples
    assert all(isinstance(r[ABSTAIN_OUTPUT], bool) and "abstain_threshold" in r for r in rows)


def test_regression_outputs_are_described_in_the_targets_units(triton):
    outputs = {o["name"]: o for o in triton.get_model_metadata("reg_mc")["outputs"]}
    assert "targets' units" in outputs["std"]["parameters"]["description"]
    assert "probability" not in outputs["std"]["parameters"]["description"]


def test_regression_ensemble_answers_mean_std_and_members(triton, task_repo, x):
    from deploykit.core.contract import MEMBER_PREDICTIONS_OUTPUT

    result = _infer(triton, "reg_ensemble", x)
    want = _local(task_repo, "reg_ensemble", x)
    for name in ("mean", "std", MEMBER_PREDICTIONS_OUTPUT):
        assert np.array_equal(result.as_numpy(name), want[name])
    assert result.as_numpy(MEMBER_PREDICTIONS_OUTPUT).shape == (2, 30, 2)
    assert result.get_response()["parameters"]["members"] == 2
    assert triton.get_model_metadata("reg_ensemble")["parameters"]["task"] == "regression"


@pytest.mark.parametrize(
    "model, says, never",
    [
        ("logits", ["predicted class", "logits (before the softmax / sigmoid)"], ["entropy -", "mean"]),
        ("reg", ["predicted", "(the targets' units)"], ["probability", "entropy", "class"]),
        ("reg_mc", ["mc_dropout: target 0:", "+-", "95% interval"], ["probability", "entropy", "class"]),
        ("reg_ensemble", ["target 1:", "+-", "95% interval"], ["probability", "entropy", "class"]),
    ],
)
def test_the_example_client_prints_what_each_task_predicts(task_server, model, says, never):
    """examples/client_tritonclient.py on a logits classifier, a regressor, its MC model and an ensemble."""
    from tests.serve.support import check_example_client

    check_example_client(task_server.url, model, says, never)
