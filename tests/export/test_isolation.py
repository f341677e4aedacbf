"""Runtime validation runs in a child process: a native crash fails that artifact only, and the next one validates.

The crashing artifact is real: ``data/xnnpack_requant_crash.tflite`` aborts LiteRT in
``allocate_tensors`` (see ``data/README.md``); no mocks.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import ModelLoadError, RuntimeCrashError, ValidationError
from deploykit.export import validate
from deploykit.export.isolated import shared_worker

DATA = Path(__file__).parent / "data"
CRASH = DATA / "xnnpack_requant_crash.tflite"
OK = DATA / "tiny_elu_ok.tflite"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Four features in [0, 1), two classes: what the fixture networks take."""
    from deploykit.data.dataset import load_dataset

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 4)).astype(np.float32)
    y = (x[:, 1] > x[:, 2]).astype(np.int64)
    path = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    np.savez(path, x=x, y=y)
    return load_dataset(path)


def test_native_crash_is_a_validation_error_of_that_artifact_and_the_next_one_validates(tiny_data):
    before = shared_worker().ping()["pid"]
    with pytest.raises(RuntimeCrashError) as info:
        validate(CRASH, tiny_data, repeats=1, check=False)
    err = info.value
    assert isinstance(err, ValidationError)
    assert str(err).startswith(f"{CRASH.name}: LiteRT crashed while loading it (signal {int(signal.SIGABRT)}, SIGABRT)")
    assert "double free" in str(err)  # glibc's own line from the child's stderr
    assert (err.artifact, err.runtime, err.signal) == (CRASH.name, "LiteRT", int(signal.SIGABRT))
    assert "\n" not in str(err)

    report = validate(OK, tiny_data, repeats=2, check=False)  # a fresh worker serves the next artifact
    assert report.artifact == OK and report.samples == len(tiny_data.x_test)
    assert report.quantization == "int8-full" and report.latency_b1_ms > 0
    assert shared_worker().ping()["pid"] != before


def test_the_worker_is_reused_across_artifacts_and_never_imports_tensorflow(tiny_data):
    first = shared_worker().ping()
    validate(OK, tiny_data, repeats=1, check=False)
    validate(OK, tiny_data, repeats=1, check=False)
    after = shared_worker().ping()
    assert after["pid"] == first["pid"]
    assert after["tensorflow"] is False


def test_isolated_and_in_process_validation_measure_the_same_predictions(tiny_data):
    isolated = validate(OK, tiny_data, repeats=2, check=False)
    local = validate(OK, tiny_data, repeats=2, check=False, isolated=False)
    assert isolated.accuracy == local.accuracy
    assert (isolated.quantization, isolated.precision, isolated.format) == (
        local.quantization,
        local.precision,
        local.format,
    )
    assert [t.batch for t in isolated.timings] == [t.batch for t in local.timings] == [1, 256]


def test_a_runtime_that_refuses_an_artifact_names_it_in_one_line(tmp_path, tiny_data):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not an onnx file")
    for isolated in (True, False):
        with pytest.raises(ModelLoadError, match=r"garbage\.onnx: onnxruntime cannot load it") as info:
            validate(bad, tiny_data, repeats=1, isolated=isolated)
        assert "\n" not in str(info.value)


def test_a_runtime_s_own_exception_fails_that_artifact_as_a_crash_does(tmp_path, tiny_data):
    # tf_keras's GroupNormalization converts to a TFLite graph whose BROADCAST_TO LiteRT cannot prepare once the
    # batch is resized: a Python RuntimeError from the runtime, not a signal. It fails that artifact (a
    # ValidationError, which optimize and export reject and go on from) and still reads as a load error of a file.
    from deploykit.backend import keras, tf
    from deploykit.errors import RuntimeFailureError

    inputs = keras.Input((4,))
    x = keras.layers.Reshape((2, 2, 1))(inputs)
    x = keras.layers.Conv2D(4, 1)(x)
    x = keras.layers.GroupNormalization(groups=2)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    flat = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs)).convert()
    path = tmp_path / "group_norm.tflite"
    path.write_bytes(flat)
    for isolated in (True, False):
        with pytest.raises(RuntimeFailureError, match=r"^group_norm\.tflite: LiteRT failed while") as info:
            validate(path, tiny_data, repeats=1, isolated=isolated)
        assert isinstance(info.value, ValidationError) and isinstance(info.value, ModelLoadError)
    validate(OK, tiny_data, repeats=1)  # the worker goes on with the next artifact
