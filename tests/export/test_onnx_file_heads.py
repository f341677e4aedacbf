"""A converter's classifier file (tf2onnx, no deploykit metadata) is quantized as what its head is.

Its output says nothing of itself: deploykit read every such file as softmax probabilities. A sigmoid head's
one column then scored every row as class 0 (the Keras tutorial's breast_cancer model: "accuracy 0.3721",
its int8 file "ok" at 100 % agreement with a probability 0.64 away), a logits file was served as probabilities;
``deploykit validate`` read the file so too. Now the head is read off its outputs
(``deploykit.core.task.kind_of_outputs``), every variant gets the served ``probabilities`` output beside the file's
own (which keeps its name), in float, and says what it is.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import breast_cancer_npz, export_every_onnx_variant

pytestmark = pytest.mark.slow  # a tf2onnx conversion and an export each


def _users_file(tmp_path, x, y, head: str):
    """The tutorial's tabular classifier in tf_keras (Normalization, Dense 16 ReLU, ``head``), converted by its user
    with tf2onnx under their own input name."""
    import tensorflow as tf
    import tf2onnx

    from deploykit.backend import keras

    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    classes = int(y.max()) + 1
    last = {
        "sigmoid": keras.layers.Dense(1, activation="sigmoid"),
        "binary_logits": keras.layers.Dense(1),
        "logits": keras.layers.Dense(classes),
    }[head]
    model = keras.Sequential([keras.Input((x.shape[1],)), norm, keras.layers.Dense(16, activation="relu"), last])
    loss = (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if head == "logits"
        else keras.losses.BinaryCrossentropy(from_logits=head == "binary_logits")
    )
    model.compile("adam", loss)
    model.fit(x, y, epochs=20, verbose=0)
    spec = [tf.TensorSpec((None, x.shape[1]), tf.float32, name="features")]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(tmp_path / "user.onnx"))
    return tmp_path / "user.onnx"


def _probabilities(raw: np.ndarray, head: str) -> np.ndarray:
    """What the user's own output means, computed here in numpy."""
    z = raw.astype(np.float64)
    if head == "logits":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    p = z[:, :1] if head == "sigmoid" else 1 / (1 + np.exp(-z[:, :1]))
    return np.concatenate([1 - p, p], axis=1)


@pytest.mark.parametrize("head", ["sigmoid", "binary_logits", "logits"])
def test_a_converters_classifier_file_is_validated_and_served_as_its_head(tmp_path, cli, head):
    import onnxruntime as ort

    from deploykit.data.dataset import load_dataset
    from deploykit.export.metadata import read_metadata
    from deploykit.export.validate import validate

    path, x, y = breast_cancer_npz(tmp_path)
    source = _users_file(tmp_path, x, y, head)
    out = tmp_path / "q"
    report = export_every_onnx_variant(cli, source, path, out)
    data = load_dataset(str(path))
    user = ort.InferenceSession(str(source))
    truth = _probabilities(user.run(None, {"features": data.x_test})[0], head)
    accuracy = float(np.mean(truth.argmax(axis=1) == data.y_test))
    assert report["reference_accuracy"] == pytest.approx(accuracy)
    assert validate(source, data, repeats=1).accuracy == pytest.approx(accuracy)  # the file itself, validated alone
    assert report["reference_accuracy"] > 0.9  # the model's own, not every row scored as class 0
    for entry in report["artifacts"]:
        file = out / entry["validation"]["artifact"]
        session = ort.InferenceSession(str(file))
        names = [o.name for o in session.get_outputs()]
        assert names == [user.get_outputs()[0].name, "probabilities"]  # the user's output kept, the served one added
        own, probabilities = session.run(None, {"features": data.x_test})
        half = entry["validation"]["quantization"] == "float16"  # its head computes in float16 (2^-11 steps)
        np.testing.assert_allclose(probabilities, _probabilities(own, head), atol=1e-3 if half else 1e-6)
        assert read_metadata(file).task == {"task": "classification", "output": head}
        assert entry["validation"]["agreement"] >= 0.95, entry["validation"]


def test_without_data_a_converters_file_claims_nothing_it_was_not_told(tmp_path, cli):
    """float16 needs no data: nothing then says what a converter's file holds, so its variant's metadata claims
    no task (a guess would write this logit file up as probabilities); ``--task`` says it."""
    from deploykit.export.metadata import read_metadata

    _, x, y = breast_cancer_npz(tmp_path)
    source = _users_file(tmp_path, x, y, "binary_logits")
    for task, expected in ((None, None), ("regression", {"task": "regression", "output": "values"})):
        out = tmp_path / f"float16_{task}"
        told = ("--task", task) if task else ()
        result = cli("export", source, "--quantize", "float16", "--out", out, "--repeats", "2", *told)
        assert result.returncode == 0, result.stderr
        assert read_metadata(out / "model_float16.onnx").task == expected
