"""Selective prediction served as a decision, and deep ensembles served like MC models.

Models are built by the real builders (export_onnx, export_mc_onnx, export_ensemble_onnx, add_abstain,
apply_mc_temperature) on tiny Keras models; one ``deploykit serve`` process answers real clients
(tritonclient.http, httpx) and every answer is compared with onnxruntime on the same file.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnx
import pytest

from deploykit.core.contract import (
    ABSTAIN_OUTPUT,
    MEMBERS_OUTPUT,
    OUTPUT_NAMES,
    SELECTIVE_KEY,
    TEMPERATURE_KEY,
    Measure,
)
from tests.serve.conftest import MC_SEED
from tests.serve.support import serving, triton_client

pytestmark = pytest.mark.slow  # starts a server process


def _threshold(proto_path, x_val, y_val, measure: Measure, coverage: float):
    """A threshold chosen on the validation split from the model's own outputs (as optimize does)."""
    import onnxruntime as ort

    from deploykit.uncertainty.measures import uncertainties
    from deploykit.uncertainty.selective import SelectiveTarget, choose_threshold

    sess = ort.InferenceSession(str(proto_path), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x_val})))
    probs = out.get("mean", out.get("probabilities"))
    u = uncertainties(probs, out.get("mutual_information"))[measure]
    return choose_threshold(
        y_val, probs.argmax(1), u, measure, SelectiveTarget(target_accuracy=None, target_coverage=coverage)
    )


def _with_abstain(path, chosen) -> None:
    from deploykit.uncertainty.selective import add_abstain

    proto = onnx.load(str(path))
    add_abstain(proto, chosen)
    onnx.save(proto, str(path))


@pytest.fixture(scope="module")
def decision_repo(tmp_path_factory, serve_keras_model, random_bn_model, digits):
    """``det_abstain`` (entropy threshold), ``mc_abstain`` (MC, seeded, mutual-information threshold),
    ``det_metadata_only`` (the deploykit.selective entry without the abstain output: the server computes it),
    ``ensemble`` (2 members, member probabilities, a temperature on the mean) and ``digits`` (no threshold)."""
    from deploykit import export_mc_onnx
    from deploykit.export import export_onnx
    from deploykit.export.metadata import ModelMetadata
    from deploykit.onnx.graph_ops import set_props
    from deploykit.uncertainty.ensemble import export_ensemble_onnx
    from deploykit.uncertainty.temperature import Placement, TemperatureFit, apply_mc_temperature

    repo, staging = tmp_path_factory.mktemp("decisions"), tmp_path_factory.mktemp("members")
    meta = ModelMetadata(class_names=list(digits.class_names))
    x_val, y_val = digits.x_val, digits.y_val

    export_onnx(serve_keras_model, repo / "digits.onnx", metadata=meta)
    export_onnx(serve_keras_model, repo / "det_abstain.onnx", metadata=meta)
    _with_abstain(repo / "det_abstain.onnx", _threshold(repo / "det_abstain.onnx", x_val, y_val, Measure.ENTROPY, 0.6))

    export_mc_onnx(
        serve_keras_model, repo / "mc_abstain.onnx", samples=30, seed=MC_SEED, class_names=list(digits.class_names)
    )
    chosen = _threshold(repo / "mc_abstain.onnx", x_val, y_val, Measure.MUTUAL_INFORMATION, 0.5)
    _with_abstain(repo / "mc_abstain.onnx", chosen)

    export_onnx(serve_keras_model, repo / "det_metadata_only.onnx", metadata=meta)
    chosen = _threshold(repo / "det_metadata_only.onnx", x_val, y_val, Measure.MAX_PROB, 0.7)
    proto = onnx.load(str(repo / "det_metadata_only.onnx"))
    set_props(proto, {SELECTIVE_KEY: chosen.metadata_value()})
    onnx.save(proto, str(repo / "det_metadata_only.onnx"))

    members = []
    for seed in (21, 22):
        members.append(staging / f"member{seed}.onnx")
        export_onnx(random_bn_model(seed, data=digits), members[-1], metadata=meta)
    export_ensemble_onnx(members, repo / "ensemble.onnx", include_members=True)
    proto = onnx.load(str(repo / "ensemble.onnx"))
    apply_mc_temperature(proto, TemperatureFit(1.5, Placement.MEAN, 0.9, 0.8, len(x_val)))
    onnx.save(proto, str(repo / "ensemble.onnx"))
    return repo


@pytest.fixture(scope="module")
def decision_server(decision_repo, tmp_path_factory):
    with serving(decision_repo, tmp_path_factory.mktemp("log") / "server.log") as process:
        yield process


@pytest.fixture(scope="module")
def triton(decision_server):
    with triton_client(decision_server.url) as c:
        yield c


@pytest.fixture(scope="module")
def x(digits):
    return digits.x_test[:40].astype(np.float32)


def stored(repo, name: str, key: str = SELECTIVE_KEY) -> dict:
    proto = onnx.load(str(repo / f"{name}.onnx"), load_external_data=False)
    return json.loads(next(p.value for p in proto.metadata_props if p.key == key))


def local(repo, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the (deterministic) file in onnxruntime: what the server must answer."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(repo / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"input": x})))


def triton_infer(client, model: str, x: np.ndarray, binary: bool):
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return client.infer(model, [tensor])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_mc_model_answers_abstain_and_its_threshold_to_tritonclient(triton, decision_repo, x, binary):
    result = triton_infer(triton, "mc_abstain", x, binary)
    record = stored(decision_repo, "mc_abstain")
    abstain = result.as_numpy(ABSTAIN_OUTPUT)
    assert abstain.dtype == np.bool_ and abstain.shape == (len(x),)
    parameters = result.get_response()["parameters"]
    assert parameters["abstain_threshold"] == record["threshold"]
    assert parameters["abstain_measure"] == "mutual_information" and parameters["samples"] == 30
    # the model's own rule on the same call's outputs (the seeded graph draws new samples on every call)
    assert np.array_equal(abstain, result.as_numpy("mutual_information") > record["threshold"])
    assert 0 < abstain.sum() < len(x), "the test needs rows on both sides of the threshold"


def test_deterministic_model_answers_abstain_over_v2_json(decision_server, decision_repo, x):
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    response = httpx.post(f"{decision_server.base}/v2/models/det_abstain/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs[ABSTAIN_OUTPUT]["datatype"] == "BOOL" and outputs[ABSTAIN_OUTPUT]["shape"] == [len(x)]
    want = local(decision_repo, "det_abstain", x)
    assert outputs[ABSTAIN_OUTPUT]["data"] == want[ABSTAIN_OUTPUT].tolist()
    assert 0 < sum(outputs[ABSTAIN_OUTPUT]["data"]) < len(x)
    record = stored(decision_repo, "det_abstain")
    assert answer["parameters"] == {"abstain_threshold": record["threshold"], "abstain_measure": "entropy"}


def test_requested_outputs_keep_the_threshold(triton, decision_repo, x):
    """A client asking for predicted_class only still learns the threshold (and gets only what it asked for)."""
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer("mc_abstain", [tensor], outputs=[httpclient.InferRequestedOutput("predicted_class")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predicted_class"]
    assert result.get_response()["parameters"]["abstain_threshold"] == stored(decision_repo, "mc_abstain")["threshold"]


@pytest.mark.parametrize("model", ["det_abstain", "mc_abstain"])
def test_v1_predictions_carry_abstain_and_the_threshold(decision_server, decision_repo, x, model):
    response = httpx.post(
        f"{decision_server.base}/v1/models/{model}:predict", json={"instances": x.tolist()}, timeout=60
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    threshold = stored(decision_repo, model)["threshold"]
    assert len(predictions) == len(x)
    assert all(p["abstain_threshold"] == threshold and isinstance(p[ABSTAIN_OUTPUT], bool) for p in predictions)
    if model == "mc_abstain":
        assert [p[ABSTAIN_OUTPUT] for p in predictions] == [p["mutual_information"] > threshold for p in predictions]
    else:
        assert [p[ABSTAIN_OUTPUT] for p in predictions] == local(decision_repo, model, x)[ABSTAIN_OUTPUT].tolist()


def test_abstain_is_computed_from_the_metadata_when_the_graph_lacks_it(triton, decision_repo, x):
    result = triton_infer(triton, "det_metadata_only", x, True)
    record = stored(decision_repo, "det_metadata_only")
    probabilities = local(decision_repo, "det_metadata_only", x)["probabilities"]
    want = 1.0 - probabilities.max(axis=1) > record["threshold"]
    assert np.array_equal(result.as_numpy(ABSTAIN_OUTPUT), want) and 0 < want.sum() < len(x)
    assert result.get_response()["parameters"]["abstain_measure"] == "max_prob"
    meta = triton.get_model_metadata("det_metadata_only")
    assert {"name": ABSTAIN_OUTPUT, "datatype": "BOOL", "shape": [-1]}.items() <= meta["outputs"][-1].items()


def test_metadata_describes_abstain_and_the_threshold(triton, decision_repo):
    meta = triton.get_model_metadata("mc_abstain")
    record = stored(decision_repo, "mc_abstain")
    parameters = meta["parameters"]
    assert parameters["abstain_threshold"] == record["threshold"]
    assert parameters["abstain_measure"] == "mutual_information" and parameters["selective"] == record
    assert parameters["selective"]["rule"] == "abstain when measure > threshold"
    abstain = next(o for o in meta["outputs"] if o["name"] == ABSTAIN_OUTPUT)
    assert abstain["datatype"] == "BOOL" and "threshold" in abstain["parameters"]["description"]
    plain = triton.get_model_metadata("digits")["parameters"]
    assert "abstain_threshold" not in plain and "selective" not in plain and "temperature" not in plain
    plain_response = triton_infer(triton, "digits", np.zeros((1, 64), np.float32), True).get_response()
    assert "parameters" not in plain_response and [o["name"] for o in plain_response["outputs"]] == ["probabilities"]


def test_ensemble_is_served_like_an_mc_model(triton, decision_repo, x):
    meta = triton.get_model_metadata("ensemble")
    assert meta["parameters"]["kind"] == "deep_ensemble" and meta["parameters"]["members"] == 2
    assert meta["parameters"]["temperature"] == stored(decision_repo, "ensemble", TEMPERATURE_KEY)
    assert meta["parameters"]["temperature"]["temperature"] == 1.5
    assert [o["name"] for o in meta["outputs"]] == [*OUTPUT_NAMES, MEMBERS_OUTPUT]
    result = triton_infer(triton, "ensemble", x, True)
    want = local(decision_repo, "ensemble", x)
    for name in [*OUTPUT_NAMES, MEMBERS_OUTPUT]:
        np.testing.assert_array_equal(result.as_numpy(name), want[name], err_msg=name)
    assert result.as_numpy(MEMBERS_OUTPUT).shape == (2, len(x), 10)
    assert result.get_response()["parameters"] == {"members": 2}
    config = triton.get_model_config("ensemble")
    assert config["max_batch_size"] == 0  # member_probabilities is [K, N, C]: batch second


def test_ensemble_ignores_samples_and_answers_v1_rows(decision_server, x):
    body = {
        "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x[:2].ravel().tolist()}],
        "parameters": {"samples": 10},
    }
    answer = httpx.post(f"{decision_server.base}/v2/models/ensemble/infer", json=body, timeout=60).json()
    assert answer["parameters"]["ignored_parameters"] == ["samples"]
    assert "deep ensemble" in answer["parameters"]["note"]
    response = httpx.post(
        f"{decision_server.base}/v1/models/ensemble:predict", json={"instances": x[:3].tolist()}, timeout=60
    )
    rows = response.json()["predictions"]
    assert len(rows) == 3 and set(rows[0]) == {*OUTPUT_NAMES, MEMBERS_OUTPUT}
    assert np.array(rows[0][MEMBERS_OUTPUT]).shape == (2, 10)  # this row's probabilities of each member


def test_start_up_lines_name_the_kinds_and_thresholds(decision_server):
    log = decision_server.log.read_text()
    assert "model 'ensemble': deep ensemble of 2 members" in log
    assert "model 'mc_abstain': MC Dropout, samples 30 (max 1000), abstains when mutual_information > " in log
    assert "model 'det_metadata_only': deterministic, abstains when max_prob > " in log
    assert "(computed by the server)" in log
