"""Serving binary classifiers (one sigmoid unit, one logit): `probabilities` [N, 2] like any two-class model, the
logit beside them, an MC model and a deep ensemble of them, through tritonclient and the v2 HTTP protocol."""

from __future__ import annotations

import numpy as np
import pytest

from tests.serve.support import check_example_client, serving, triton_client

pytestmark = pytest.mark.slow  # starts a server process

LABELS = ["benign", "malignant"]


def _model(seed: int, head: str, dropout: float = 0.0):
    """A small tf_keras net ending in Dense(1, sigmoid), or Dense(1) (a logit)."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    layers = [keras.Input(shape=(6,)), keras.layers.Dense(16, activation="relu")]
    layers += [keras.layers.Dropout(dropout)] if dropout else []
    return keras.Sequential([*layers, keras.layers.Dense(1, activation=head if head == "sigmoid" else None)])


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def binary_repo(tmp_path_factory):
    """``sigmoid``, ``logit`` (deterministic), ``sigmoid_mc`` (seeded MC), ``pair`` (an ensemble of two
    sigmoid models) and ``reg`` (a two-target regressor, for the example client), written by the real exporters."""
    from deploykit import export_mc_onnx
    from deploykit.core.task import Task
    from deploykit.export import export_onnx
    from deploykit.export.metadata import ModelMetadata
    from deploykit.uncertainty.ensemble import export_ensemble_onnx
    from deploykit.uncertainty.mc_graph import MCConfig

    repo = tmp_path_factory.mktemp("binary")
    meta = ModelMetadata(class_names=LABELS)
    export_onnx(_model(1, "sigmoid"), repo / "sigmoid.onnx", metadata=meta)
    export_onnx(_model(2, "linear"), repo / "logit.onnx", metadata=meta, task=Task.CLASSIFICATION)
    export_mc_onnx(
        _model(3, "sigmoid", dropout=0.3),
        repo / "sigmoid_mc.onnx",
        class_names=LABELS,
        config=MCConfig(samples=20, seed=5, include_samples=True),
    )
    staging = tmp_path_factory.mktemp("members")
    members = []
    for seed in (4, 5):
        members.append(staging / f"m{seed}.onnx")
        export_onnx(_model(seed, "sigmoid"), members[-1], metadata=meta)
    export_ensemble_onnx(members, repo / "pair.onnx", class_names=LABELS, include_members=True)
    from deploykit.backend import keras

    regressor = keras.Sequential([keras.Input(shape=(6,)), keras.layers.Dense(2)])
    export_onnx(regressor, repo / "reg.onnx", task=Task.REGRESSION)
    return repo


@pytest.fixture(scope="module")
def binary_server(binary_repo, tmp_path_factory):
    with serving(binary_repo, tmp_path_factory.mktemp("log") / "server.log") as process:
        yield process


@pytest.fixture(scope="module")
def triton(binary_server):
    with triton_client(binary_server.url) as client:
        yield client


def _infer(client, model, x, outputs=None):
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    requested = [httpclient.InferRequestedOutput(n, **kw) for n, kw in (outputs or [])] or None
    return client.infer(model, [tensor], outputs=requested)


def _two_class(p1: np.ndarray) -> np.ndarray:
    return np.concatenate([1 - p1, p1], axis=1)


def test_a_sigmoid_model_serves_two_class_probabilities_and_labels(triton, x):
    result = _infer(triton, "sigmoid", x)
    expected = _two_class(np.asarray(_model(1, "sigmoid")(x)).astype(np.float64))
    assert result.as_numpy("probabilities").shape == (30, 2)
    assert np.abs(result.as_numpy("probabilities") - expected).max() < 1e-5
    top = _infer(triton, "sigmoid", x, [("probabilities", {"class_count": 1})]).as_numpy("probabilities")
    assert [row[0].decode().split(":")[-1] for row in top] == [LABELS[i] for i in expected.argmax(1)]
    meta = triton.get_model_metadata("sigmoid")["parameters"]
    assert meta["task"] == "classification" and meta["output"] == "sigmoid" and meta["class_labels"] == LABELS


def test_a_logit_model_serves_its_logit_beside_the_probabilities(triton, binary_server, x):
    import httpx

    result = _infer(triton, "logit", x)
    z = np.asarray(_model(2, "linear")(x)).astype(np.float64)
    assert result.as_numpy("logits").shape == (30, 1) and np.abs(result.as_numpy("logits") - z).max() < 1e-5
    assert np.abs(result.as_numpy("probabilities") - _two_class(1 / (1 + np.exp(-z)))).max() < 1e-6
    assert triton.get_model_metadata("logit")["parameters"]["output"] == "binary_logits"
    refused = httpx.post(
        f"{binary_server.base}/v2/models/logit/infer",
        timeout=60,
        json={
            "inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": x[0].tolist()}],
            "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
        },
    )
    assert refused.status_code == 400  # one logit is not a score per class label


def test_the_mc_model_and_the_ensemble_of_binary_models_answer_two_classes(triton, x):
    mc = _infer(triton, "sigmoid_mc", x)
    assert mc.as_numpy("mean").shape == (30, 2) and np.allclose(mc.as_numpy("mean").sum(1), 1.0, atol=1e-5)
    samples = mc.as_numpy("sample_probabilities")
    assert samples.shape[1:] == (30, 2) and samples.std(0).max() > 0  # dropout samples differ
    assert np.array_equal(mc.as_numpy("predicted_class"), mc.as_numpy("mean").argmax(1))
    pair = _infer(triton, "pair", x)
    members = [_two_class(np.asarray(_model(seed, "sigmoid")(x)).astype(np.float64)) for seed in (4, 5)]
    assert np.abs(pair.as_numpy("mean") - np.mean(members, axis=0)).max() < 1e-5
    assert triton.get_model_metadata("pair")["parameters"]["task"] == "classification"


@pytest.mark.parametrize(
    "model, says, never",
    [
        ("sigmoid", ["predicted class", "binary classifier: P(class 1 (malignant))"], ["logits"]),
        ("logit", ["binary classifier: P(class 1 (malignant))", "logits (before the softmax / sigmoid)"], []),
        ("sigmoid_mc", ["mean probability", "0 samples)", "mutual information"], []),
        ("pair", ["mean probability", "the ensemble's members"], ["None samples"]),
        ("reg", ["predicted", "the targets' units"], ["probability", "entropy", "class"]),
    ],
)
def test_the_example_client_prints_what_each_model_predicts(binary_server, model, says, never):
    """examples/client_tritonclient.py reads task / kind / output from /v2/models/NAME (never an entropy of logits)."""
    check_example_client(binary_server.url, model, says, never)
