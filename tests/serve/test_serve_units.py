"""ServeConfig, request checks and model discovery, without a server."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from deploykit.errors import ConfigError, UsageError
from deploykit.serve import ServeConfig, limits


def test_config_defaults_and_round_trip():
    config = ServeConfig()
    assert (config.host, config.port, config.samples, config.max_rows, config.max_samples, config.max_body_bytes) == (
        "127.0.0.1",
        8080,
        30,
        1024,
        1000,
        16 * 1024 * 1024,
    )
    changed = ServeConfig(host="::1", port=9000, samples=50, threads=2, max_rows=8)
    assert ServeConfig.from_dict(changed.to_dict()) == changed


@pytest.mark.parametrize(
    "values, field",
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": "80"}, "port"),
        ({"host": ""}, "host"),
        ({"host": "bad host!"}, "host"),
        ({"samples": 0}, "samples"),
        ({"samples": 2000}, "samples"),
        ({"threads": 0}, "threads"),
        ({"max_rows": 0}, "max_rows"),
        ({"max_samples": True}, "max_samples"),
        ({"max_body_bytes": 10}, "max_body_bytes"),
        ({"colour": 1}, "colour"),
        ({"max_network_rows": 0}, "max_network_rows"),
        ({"max_response_values": -1}, "max_response_values"),
        ({"max_header_count": 2}, "max_header_count"),
        ({"max_header_bytes": 100}, "max_header_bytes"),
        ({"header_timeout": 0}, "header_timeout"),
        ({"body_timeout": "10"}, "body_timeout"),
        ({"keep_alive_timeout": True}, "keep_alive_timeout"),
        ({"max_connections": 1}, "max_connections"),
    ],
)
def test_config_refuses_bad_values(values, field):
    with pytest.raises(ConfigError, match=field):
        ServeConfig.from_dict(values)


def test_samples_parameter():
    assert limits.check_samples({}, 30, 1000) == 30
    assert limits.check_samples({"samples": np.int64(7)}, 30, 1000) == 7
    for bad in (0, 1001, True, 2.0, "5", None):
        with pytest.raises(limits.RequestError, match="between 1 and 1000"):
            limits.check_samples({"samples": bad}, 30, 1000)


def test_batch_checks():
    x = limits.check_batch(np.ones((2, 4), np.float64), (4,), 8, "input")
    assert x.dtype == np.float32 and x.flags.c_contiguous
    with pytest.raises(limits.RequestError, match=r"shape \[N, 4\], got \[2, 3\]"):
        limits.check_batch(np.ones((2, 3)), (4,), 8, "input")
    with pytest.raises(limits.RequestError, match="9 rows, more than the limit of 8"):
        limits.check_batch(np.ones((9, 4)), (4,), 8, "input")
    with pytest.raises(limits.RequestError, match="2 NaN or infinite values"):
        limits.check_batch(np.array([[np.nan, np.inf, 0, 0]]), (4,), 8, "input")
    with pytest.raises(limits.RequestError, match="empty batch"):
        limits.v1_instances({"instances": []}, (4,), 8)


def test_v2_header_checks():
    good = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    limits.check_v2_header(good, 16)
    with pytest.raises(limits.RequestError, match="declare 16 bytes, 12 follow"):
        limits.check_v2_header(good, 12)
    with pytest.raises(limits.RequestError, match=r"inputs\[0\].shape must be a list"):
        limits.check_v2_header({"inputs": [{"name": "input", "shape": 3, "datatype": "FP32", "data": []}]}, 0)
    with pytest.raises(limits.RequestError, match="'outputs' must be a list"):
        limits.check_v2_header({"inputs": [], "outputs": {"name": "mean"}}, 0)


def test_discover_models(model_repo, tmp_path):
    from deploykit.serve.discover import discover_models

    found = discover_models(model_repo)
    assert found == {
        "digits": model_repo / "digits.onnx",
        "digits_mc": model_repo / "digits_mc.onnx",
        "mc_triton": model_repo / "mc_triton" / "1" / "model.onnx",
    }
    assert discover_models(model_repo / "digits.onnx") == {"digits": model_repo / "digits.onnx"}
    assert discover_models(model_repo / "mc_triton") == {"mc_triton": found["mc_triton"]}
    assert discover_models(found["mc_triton"]) == {"mc_triton": found["mc_triton"]}
    newer = tmp_path / "repo" / "m" / "12"
    newer.mkdir(parents=True)
    (tmp_path / "repo" / "m" / "3").mkdir()
    shutil.copy(found["digits"], newer / "model.onnx")
    shutil.copy(found["digits"], tmp_path / "repo" / "m" / "3" / "model.onnx")
    assert discover_models(tmp_path / "repo") == {"m": newer / "model.onnx"}  # the highest version
    shutil.copy(found["digits"], tmp_path / "repo" / "m.onnx")
    with pytest.raises(UsageError, match="two models named 'm'"):
        discover_models(tmp_path / "repo")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "no models in"),
        (lambda p: p / "missing.onnx", "no such file or folder"),
        (lambda p: (p / "model.txt").write_text("x") and p / "model.txt", "not an .onnx file"),
        (lambda p: (p / "bad name.onnx").write_bytes(b"x") and p, "model name 'bad name'"),
    ],
)
def test_discover_refuses(tmp_path, make, message):
    from deploykit.serve.discover import discover_models

    with pytest.raises(UsageError, match=message):
        discover_models(make(tmp_path))


def test_shown_bounds_and_escapes_client_names():
    assert limits.shown("digits") == "'digits'"
    forged = limits.shown("nope\n2026-01-01 INFO forged")
    assert "\n" not in forged and "\\n" in forged
    long = limits.shown("m" * 1_000_000)
    assert len(long) < 100 and long.endswith("(1000000 characters)")
    assert limits.shown(["1", 64]) == '["1", 64]'


def test_json_data_must_be_numbers():
    limits.check_numbers([[1, 2.5], [3, -4e3]], "x")
    for data, word in (([1.0, True], "booleans"), ([[1.0], ["2"]], "strings"), ([None], "nulls"), ([{}], "objects")):
        with pytest.raises(limits.RequestError, match=word):
            limits.check_numbers(data, "x")


def test_classification_strings_as_triton_writes_them():
    values = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    top = limits.classify(values, 2, ["a", "b", "c"])
    assert top.tolist() == [[b"0.700000:1:b", b"0.200000:2:c"], [b"0.500000:0:a", b"0.250000:1:b"]]
    assert limits.classify(values, 1, []).tolist() == [[b"0.700000:1"], [b"0.500000:0"]]  # no labels: score:index
    with pytest.raises(limits.RequestError, match="between 1 and 3"):
        limits.check_classification("probabilities", 4, 3, True)
    with pytest.raises(limits.RequestError, match="no class axis"):
        limits.check_classification("predictive_entropy", 1, 1, False)


def test_connection_cap_stays_below_the_descriptor_limit():
    import resource

    from deploykit.serve.connections import FD_RESERVE, connection_cap

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10) == 10 or soft - FD_RESERVE < 10
    if soft != resource.RLIM_INFINITY:
        assert connection_cap(10**9) == max(4, soft - FD_RESERVE)


def test_name_option_of_discovery(model_repo):
    from deploykit.serve.discover import discover_models

    assert discover_models(model_repo / "digits.onnx", name="fashion") == {"fashion": model_repo / "digits.onnx"}
    with pytest.raises(UsageError, match="--name names one model"):
        discover_models(model_repo, name="x")
    with pytest.raises(UsageError, match="from --name"):
        discover_models(model_repo / "digits.onnx", name="bad name")


@pytest.mark.parametrize(
    "raw, outputs, match",
    [
        ("{not json", ["probabilities", "abstain"], "is not a selective threshold"),
        ('{"measure": "variance", "threshold": 0.1}', ["probabilities", "abstain"], "is not a selective threshold"),
        ('{"measure": "entropy"}', ["probabilities", "abstain"], "is not a selective threshold"),
        ('{"measure": "entropy", "threshold": "0.1"}', ["probabilities", "abstain"], "expected a finite number"),
        ('{"measure": "entropy", "threshold": NaN}', ["probabilities", "abstain"], "expected a finite number"),
        (
            '{"measure": "entropy", "threshold": 0.1, "rule": "abstain when measure < threshold"}',
            ["probabilities"],
            "this server applies 'abstain when measure > threshold'",
        ),
        (
            '{"measure": "mutual_information", "threshold": 0.1}',
            ["probabilities"],
            "none of \\['mutual_information'\\]",
        ),
    ],
)
def test_a_selective_entry_the_server_cannot_apply_is_refused_at_load(raw, outputs, match):
    from deploykit.errors import ModelLoadError
    from deploykit.serve.decision import abstain_of

    with pytest.raises(ModelLoadError, match=match):
        abstain_of("m.onnx", {"deploykit.selective": raw}, outputs)


def test_abstain_of_reads_the_threshold_or_knows_it_has_none():
    import numpy as np

    from deploykit.core.contract import Measure
    from deploykit.serve.decision import abstain_of

    assert abstain_of("m.onnx", {}, ["probabilities"]) is None
    unknown = abstain_of("m.onnx", {}, ["probabilities", "abstain"])
    assert unknown.threshold is None and unknown.parameters() == {} and not unknown.computed
    computed = abstain_of(
        "m.onnx", {"deploykit.selective": '{"measure": "entropy", "threshold": 0.5}'}, ["probabilities"]
    )
    assert computed.computed and computed.measure is Measure.ENTROPY
    assert computed.parameters() == {"abstain_threshold": 0.5, "abstain_measure": "entropy"}
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]], np.float32)  # entropies 0, ln 2 = 0.69, 0.33
    assert computed.compute({"probabilities": probs}).tolist() == [False, True, False]


@pytest.mark.slow  # exports an MC model (TensorFlow)
def test_triton_repository_of_a_default_opset_mc_model(serve_keras_model, tmp_path):
    """At opset 15+ `samples` is an optional-typed input, which Triton's onnxruntime backend cannot feed: the
    repository's copy gives it an empty Optional, so the exported default applies and `input` is the only input."""
    import onnxruntime as ort

    from deploykit import export_mc_onnx
    from deploykit.export import write_triton_repository

    export_mc_onnx(serve_keras_model, tmp_path / "mc.onnx", samples=5, include_samples=True)
    folder = write_triton_repository(tmp_path / "mc.onnx", tmp_path / "repo")
    assert "samples" not in (folder / "config.pbtxt").read_text()
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    x = np.zeros((2, *session.get_inputs()[0].shape[1:]), np.float32)
    assert session.run(["sample_probabilities"], {"input": x})[0].shape[0] == 5  # the exported default T
