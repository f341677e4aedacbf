"""A Keras 3 model with layers no deploykit step understands is still exported and served (issue 20's third target).

Cropping2D and UpSampling2D are outside the layer table, and Permute is in it only for the MC graph (no fold or
prune rule knows them): the Keras 3 file goes through ``deploykit export`` and ``deploykit serve`` as a user runs
them, and a real HTTP client gets the user's own outputs. (A custom Python layer class is read only when its code
is given, and refused by name otherwise: see tests/keras3/test_inline.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.serve.support import get, serving, triton_client

pytestmark = pytest.mark.slow  # a CLI export and a server process


def _keras3_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Cropping2D(((1, 1), (2, 0)), name="crop")(x)
    x = keras.layers.Permute((2, 1, 3), name="permute")(x)
    x = keras.layers.UpSampling2D(2, name="upsample")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_layers_no_step_understands_are_exported_and_served(tmp_path):
    import tritonclient.http as httpclient

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)
    from deploykit.core.layers import Role, support_for
    from deploykit.io.models import load_model

    model = _keras3_model()
    model.save(tmp_path / "m.keras")
    imported = load_model(tmp_path / "m.keras")
    assert {support_for(imported.get_layer(n)).role for n in ("crop", "permute", "upsample")} == {Role.OTHER}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deploykit.cli.main", "export", str(tmp_path / "m.keras"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert (out / "model.onnx").exists() and (out / "model.tflite").exists()

    x = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype(np.float32)
    with serving(out, tmp_path / "serve.log") as server:
        status, body = get(f"{server.base}/v2/models/model")
        assert status == 200, body
        name = json.loads(body)["inputs"][0]["name"]
        with triton_client(server.url) as client:
            tensor = httpclient.InferInput(name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            served = client.infer("model", [tensor]).as_numpy("probabilities")
    assert np.abs(served - np.asarray(model(x))).max() <= 1e-5
