"""``deploykit mc --conformal 0.9`` end to end: a Keras 3 model saved by the user, the CLI's MC model with its
prediction sets, served by ``deploykit serve`` and read with tritonclient (BOOL tensors), v2 JSON and v1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import onnx
import pytest

from deploykit.core.contract import CONFORMAL_KEY, PREDICTION_SET_OUTPUT, SET_SIZE_OUTPUT
from tests.serve.support import serving, triton_client

pytestmark = pytest.mark.slow  # trains a tiny model, runs the CLI and a server process


@pytest.fixture(scope="module")
def conformal_out(tmp_path_factory, digits):
    """A Keras 3 Dense -> Dropout -> softmax model trained 3 epochs on digits, through ``deploykit mc --conformal``."""
    import keras

    import deploykit.backend  # noqa: F401  (TF set up as deploykit does before Keras 3)

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Rescaling(1 / 16),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=3, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("conformal")
    model.save(folder / "model.keras")
    out = folder / "served"
    command = [
        "mc",
        str(folder / "model.keras"),
        "--data",
        "digits",
        "--samples",
        "10",
        "--conformal",
        "0.9",
        "--target-accuracy",
        "0.8",
        "--out",
        str(out),
    ]  # below what 3 epochs reach: a bound exists
    run = subprocess.run(
        [sys.executable, "-m", "deploykit.cli.main", *command],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "prediction sets at 90%: test coverage" in run.stdout
    return out


def test_cli_report_and_metadata(conformal_out):
    summary = json.loads((conformal_out / "comparison.json").read_text())
    c = summary["comparison"]["conformal"]
    assert c["calibration"]["method"] == "raps" and c["calibration"]["alpha"] == pytest.approx(0.1)
    assert c["test"]["coverage"] >= 0.8 and len(c["test"]["per_class"]) == 10 and len(c["curve"]) >= 5
    assert (conformal_out / "conformal_coverage.png").stat().st_size > 0
    markdown = (conformal_out / "comparison.md").read_text()
    assert "## Conformal prediction sets" in markdown and "| alpha | target coverage |" in markdown
    assert "lower bound" in markdown and "Clopper-Pearson" in markdown  # the abstain bound beside its estimate
    proto = onnx.load(str(conformal_out / "model_mc.onnx"))
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == CONFORMAL_KEY))
    assert meta["n"] == c["calibration"]["count"] and meta["threshold"] == c["calibration"]["threshold"]
    assert [o.name for o in proto.graph.output][-3:] == ["abstain", PREDICTION_SET_OUTPUT, SET_SIZE_OUTPUT]


@pytest.fixture(scope="module")
def server(conformal_out, tmp_path_factory):
    with serving(conformal_out / "model_mc.onnx", tmp_path_factory.mktemp("log") / "server.log") as process:
        yield process


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_reads_the_prediction_sets(server, conformal_out, digits, binary):
    import tritonclient.http as httpclient

    from deploykit.uncertainty.conformal import Conformal, ConformalMethod, prediction_sets

    x = digits.x_test[:50].astype(np.float32)
    with triton_client(server.url) as client:
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("model_mc", [tensor])
        meta = client.get_model_metadata("model_mc")
    sets, sizes = result.as_numpy(PREDICTION_SET_OUTPUT), result.as_numpy(SET_SIZE_OUTPUT)
    assert sets.dtype == np.bool_ and sets.shape == (50, 10) and np.array_equal(sizes, sets.sum(1))
    stored = meta["parameters"]["conformal"]
    cal = Conformal(
        ConformalMethod(stored["method"]),
        stored["alpha"],
        stored["n"],
        stored["threshold"],
        lam=stored.get("lambda", 0.0),
        k_reg=stored.get("k_reg", 0),
    )
    assert np.array_equal(sets, prediction_sets(result.as_numpy("mean"), cal))  # the same call's mean, the stored rule
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs[PREDICTION_SET_OUTPUT]["datatype"] == "BOOL" and outputs[PREDICTION_SET_OUTPUT]["shape"] == [-1, 10]
    assert "conformal prediction set" in outputs[PREDICTION_SET_OUTPUT]["parameters"]["description"]


def test_v2_metadata_and_v1_predictions(server):
    x = np.zeros((3, 64), np.float32)
    meta = httpx.get(f"{server.base}/v2/models/model_mc", timeout=60).json()
    assert meta["parameters"]["conformal"]["method"] == "raps"
    response = httpx.post(f"{server.base}/v1/models/model_mc:predict", json={"instances": x.tolist()}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert all(
        len(p[PREDICTION_SET_OUTPUT]) == 10
        and all(isinstance(v, bool) for v in p[PREDICTION_SET_OUTPUT])
        and p[SET_SIZE_OUTPUT] == sum(p[PREDICTION_SET_OUTPUT])
        for p in predictions
    )


@pytest.fixture(scope="module")
def regression_server(tmp_path_factory):
    """A regression MC model (Dense -> Dropout -> Dense(1), bias at the mean target) with conformal intervals."""
    from deploykit.backend import keras, set_seed
    from deploykit.data.dataset import load_dataset
    from deploykit.uncertainty import MCConfig
    from deploykit.uncertainty.bundle import mc_bundle

    data = load_dataset("diabetes")
    set_seed(3)
    model = keras.Sequential(
        [
            keras.Input(shape=data.input_shape),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )
    kernel, _ = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, np.array([np.mean(data.y_train)], np.float32)])
    folder = tmp_path_factory.mktemp("regression")
    mc_bundle(model, data, folder / "reg.onnx", MCConfig(samples=10), conformal=0.9)
    with serving(folder / "reg.onnx", tmp_path_factory.mktemp("log") / "server.log") as process:
        yield process, data


def test_served_regressor_answers_lower_and_upper(regression_server):
    from deploykit.core.contract import LOWER_OUTPUT, UPPER_OUTPUT
    from deploykit.uncertainty.conformal import Conformal, ConformalMethod, intervals

    server, data = regression_server
    x = np.asarray(data.x_test[:20], np.float32)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    answer = httpx.post(f"{server.base}/v2/models/reg/infer", json=body, timeout=60).json()
    out = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in answer["outputs"]}
    assert out[LOWER_OUTPUT].shape == out[UPPER_OUTPUT].shape == (20, 1)
    stored = httpx.get(f"{server.base}/v2/models/reg", timeout=60).json()["parameters"]["conformal"]
    assert stored["method"] == "normalized" and stored["rule"] == "[lower, upper] = center -/+ threshold * scale"
    cal = Conformal(ConformalMethod.NORMALIZED, stored["alpha"], stored["n"], stored["threshold"])
    lower, upper = intervals(out["mean"], out["std"], cal)  # the same call's mean and std
    np.testing.assert_allclose(out[LOWER_OUTPUT], lower, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out[UPPER_OUTPUT], upper, rtol=1e-5, atol=1e-3)
    v1 = httpx.post(f"{server.base}/v1/models/reg:predict", json={"instances": x[:3].tolist()}, timeout=60).json()
    assert all(p[LOWER_OUTPUT][0] <= p["mean"][0] <= p[UPPER_OUTPUT][0] for p in v1["predictions"])
