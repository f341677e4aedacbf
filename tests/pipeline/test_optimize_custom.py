"""``deploykit optimize`` on a model made of custom classes, their code given with ``--custom-objects``.

The Keras subclassing guide's ``MLPBlock`` (a ``keras.Model`` subclass) of its ``Linear`` layers, trained on
scikit-learn's digits and saved as a Keras 3 file, as a user following the guide and the saving guide does. The
run must prune the Linear layers (read as Dense layers), ship, and give back files that open without the code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.custom_models import GUIDE_PY

pytestmark = pytest.mark.slow  # trains a model and runs optimize in a fresh process

#: The user's training script, in a plain Keras 3 process (deploykit not imported).
TRAIN_PY = textwrap.dedent(
    """
    import sys
    import numpy as np, keras
    sys.path.insert(0, sys.argv[1])
    from guide_layers import MLPBlock
    keras.utils.set_random_seed(0)
    z = np.load(sys.argv[2])
    model = MLPBlock()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(z["x"], z["y"], epochs=15, verbose=0)
    model.save(sys.argv[3])
    """
)

#: Checks in a plain Keras 3 process without the user's module: model.keras opens, and equals model.onnx.
CHECK_PY = textwrap.dedent(
    """
    import json, sys
    import numpy as np, keras, onnxruntime as ort
    out, data = sys.argv[1], np.load(sys.argv[2])
    kept = keras.saving.load_model(out + "/model.keras")
    x = data["x"][:200]
    session = ort.InferenceSession(out + "/model.onnx", providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    print(json.dumps({"diff": float(np.abs(got - np.asarray(kept(x))).max()), "classes": sorted(
        {type(layer).__module__.split(".")[0] for layer in kept.layers})}))
    """
)


def _plain_keras3(*argv):
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return subprocess.run([sys.executable, "-c", *argv], capture_output=True, text=True, env=env, timeout=900)


def test_optimize_ships_the_subclassing_guides_model_with_its_code_given(tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "digits.npz", x=(x / 16).astype(np.float32), y=y)
    (tmp_path / "guide_layers.py").write_text(GUIDE_PY.replace("{package}", "Guide"))
    trained = _plain_keras3(TRAIN_PY, str(tmp_path), str(tmp_path / "digits.npz"), str(tmp_path / "mlp.keras"))
    assert trained.returncode == 0, trained.stderr[-2000:]

    out = tmp_path / "out"
    argv = ["optimize", tmp_path / "mlp.keras", "--data", tmp_path / "digits.npz", "--out", out]
    argv += ["--custom-objects", tmp_path / "guide_layers.py", "--no-mc"]
    done = subprocess.run(
        [sys.executable, "-m", "deploykit.cli.main", *map(str, argv)], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "custom layers read as what their call computes" in done.stderr
    report = json.loads((out / "report.json").read_text())
    verdicts = {a["file"]: a["verdict"] for a in report["artifacts"]}
    assert verdicts.get("model.onnx") == "pass", verdicts
    pruned = [row for row in report["layer_sparsity"] if row["stage"] == "after sparsity" and row["zeros"]]
    assert pruned, report["layer_sparsity"]  # the Linear layers, read as Dense layers, were pruned

    checked = _plain_keras3(CHECK_PY, str(out), str(tmp_path / "digits.npz"))
    assert checked.returncode == 0, checked.stderr[-2000:]
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    assert result["classes"] == ["keras"] and result["diff"] <= 1e-4


#: A tf.keras user's training script (TF_USE_LEGACY_KERAS=1: tf.keras is tf_keras), run as its own program.
LAMBDA_TRAIN_PY = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    keras = tf.keras
    z = np.load(sys.argv[1])
    inputs = keras.Input((64,))
    h = keras.layers.Lambda(lambda t: tf.math.cumsum(t, axis=1) / 100.0, name="running_sum")(inputs)
    h = keras.layers.Dropout(0.2)(keras.layers.Dense(32, activation="relu")(h))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(z["x"], z["y"], epochs=5, verbose=0)
    model.save(sys.argv[2])
    """
)


def test_optimize_runs_a_trusted_lambda_no_step_reads(tmp_path):
    """A tf.keras Lambda whose function no layer computes (``tf.math.cumsum``) stays a Lambda. ``optimize --unsafe``
    used to stop at the fold (and the sparsity search) with "pass --unsafe", which it had been given; now the run
    ships, and the MC Dropout step is skipped naming the layer."""
    import os

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, (600, 64)).astype(np.float32)
    y = (x[:, :32].sum(axis=1) > x[:, 32:].sum(axis=1)).astype(np.int64)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    trained = subprocess.run(
        [sys.executable, "-c", LAMBDA_TRAIN_PY, str(tmp_path / "data.npz"), str(tmp_path / "m.keras")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    command = [sys.executable, "-m", "deploykit.cli.main", "optimize", str(tmp_path / "m.keras"), "--unsafe"]
    command += ["--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    shipped = [row["file"] for row in report["artifacts"] if row.get("verdict") == "pass"]
    assert {"model.onnx", "model.tflite"} <= set(shipped), shipped
    assert "'running_sum' of type Lambda: cannot be expressed in the MC Dropout graph" in done.stderr


#: The book's chapter 12 activation in the user's module, and a tf.keras training script importing it.
SOFTPLUS_PY = """
import tensorflow as tf

def my_softplus(z):
    return tf.math.log(1.0 + tf.exp(z))
"""
SOFTPLUS_TRAIN_PY = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    keras = tf.keras
    sys.path.insert(0, sys.argv[1])
    from my_functions import my_softplus
    z = np.load(sys.argv[2])
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation=my_softplus),
                              keras.layers.Dropout(0.2), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(z["x"], z["y"], epochs=5, verbose=0)
    model.save(sys.argv[3])
    """
)


def test_optimize_runs_a_tf_keras_model_computing_with_the_users_function(tmp_path):
    """``Dense(activation=my_softplus)`` in a tf.keras file, its code given with ``--custom-objects``: compact read the
    function's serialized form as a dict of a name and crashed, and so did the MC graph; now the run ships and the MC
    step is skipped naming the activation."""
    import os

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (600, 64)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, :32].sum(axis=1) > x[:, 32:].sum(axis=1)).astype(np.int64))
    (tmp_path / "my_functions.py").write_text(SOFTPLUS_PY)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    script = [sys.executable, "-c", SOFTPLUS_TRAIN_PY, str(tmp_path), str(tmp_path / "data.npz")]
    trained = subprocess.run([*script, str(tmp_path / "m.keras")], capture_output=True, text=True, env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    command = [sys.executable, "-m", "deploykit.cli.main", "optimize", str(tmp_path / "m.keras"), "--data"]
    command += [str(tmp_path / "data.npz"), "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, "--custom-objects", str(tmp_path / "my_functions.py")], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    shipped = [row["file"] for row in report["artifacts"] if row.get("verdict") == "pass"]
    assert {"model.onnx", "model.tflite"} <= set(shipped), shipped
    assert "activation 'my_softplus' has no ONNX form in deploykit" in done.stderr
