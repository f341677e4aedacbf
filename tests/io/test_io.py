"""deploykit.io.models: loading tf_keras models in every format, and refusing what is not a usable model."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import ModelLoadError, UnsafeModelError, UnsupportedLayerError, UsageError
from deploykit.io.models import load_model, save_model

X = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")


@pytest.fixture(scope="module")
def model(random_bn_model):
    return random_bn_model(3, input_dim=8, hidden=(6, 5), classes=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize("name", ["model.keras", "model.h5", "saved_model"])
def test_loads_each_tf_keras_format(model, folder, name):
    from deploykit.backend import is_tf_keras_model

    path = folder / name
    if name == "saved_model":
        model.save(path)  # tf_keras writes a SavedModel folder for a path without suffix
        with pytest.raises(UnsafeModelError, match="SavedModel folder holds traced TensorFlow graphs.*--unsafe"):
            load_model(path)  # its graphs run at load: only with unsafe, as in Keras 3's safe mode
    else:
        save_model(model, path)
    loaded = load_model(path, unsafe=name == "saved_model")
    assert is_tf_keras_model(loaded)
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    np.testing.assert_allclose(loaded(X, training=False).numpy(), model(X, training=False).numpy(), atol=1e-6)


def test_save_model_is_atomic_and_checks_its_input(model, tmp_path):
    with pytest.raises(UsageError, match="suffix"):
        save_model(model, tmp_path / "model.pb")
    with pytest.raises(UsageError, match="tf_keras"):
        save_model(object(), tmp_path / "model.keras")
    assert list(tmp_path.iterdir()) == []


def _not_models(tmp_path):
    from deploykit.backend import tf

    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "data.csv").write_text("a,label\n1,0\n")
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "arrays.npz", x=np.zeros(3))
    (tmp_path / "fake.keras").write_text("hello")
    (tmp_path / "fake.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return 2.0 * x

    tf.saved_model.save(Doubler(), str(tmp_path / "plain_saved_model"))
    return {
        "notes.txt": "not a model file",
        "data.csv": "not a model file",
        "empty": "not a SavedModel",
        "arrays.npz": "not a Keras model (no config.json)",
        "fake.keras": "not a model file",
        "fake.h5": "unreadable HDF5",
        "plain_saved_model": "without Keras metadata",
        "missing.keras": "no such file",
    }


def test_paths_that_are_not_models_give_one_clear_error(tmp_path):
    for name, message in _not_models(tmp_path).items():
        with pytest.raises(ModelLoadError) as info:
            load_model(tmp_path / name)
        text = str(info.value)
        assert str(tmp_path / name) in text and message in text, text
        assert type(info.value) is ModelLoadError and "\n" not in text


def test_a_truncated_keras_file(model, tmp_path):
    save_model(model, tmp_path / "model.keras")
    data = (tmp_path / "model.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.keras"):
        load_model(tmp_path / "cut.keras")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_keras_layer_outside_the_table_loads_and_computes_the_same(tmp_path, suffix):
    """A built-in layer the support table does not know is no dead end: it loads (the steps that cannot
    handle it skip it; the converters export it). Only code from outside Keras needs --unsafe."""
    from deploykit.backend import keras
    from deploykit.core.layers import Role, support_for

    m = keras.Sequential(
        [
            keras.Input((5, 4, 3)),
            keras.layers.ConvLSTM1D(2, 3, name="memory"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    save_model(m, tmp_path / f"convlstm{suffix}")
    loaded = load_model(tmp_path / f"convlstm{suffix}")
    assert support_for(loaded.get_layer("memory")).role is Role.OTHER
    x = np.random.default_rng(0).normal(size=(4, 5, 4, 3)).astype("float32")
    assert np.abs(loaded(x).numpy() - m(x).numpy()).max() == 0.0


def test_nested_model_is_read_flat(tmp_path):
    """A nested model was refused; it is read as one graph (tests/io/test_flat.py), its layers named as inside."""
    from deploykit.backend import keras

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inside")], name="block")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)])
    save_model(model, tmp_path / "nested.keras")
    loaded = load_model(tmp_path / "nested.keras")
    assert [layer.name for layer in loaded.layers if layer.weights][0] == "inside"
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert np.abs(loaded(x).numpy() - model(x).numpy()).max() <= 1e-6


@pytest.fixture(scope="module")
def lambda_files(folder):
    from deploykit.backend import keras

    m = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4), keras.layers.Lambda(lambda t: t * 3.0, name="triple")]
    )
    paths = {"keras": folder / "lambda.keras", "h5": folder / "lambda.h5", "saved_model": folder / "lambda_sm"}
    save_model(m, paths["keras"])
    save_model(m, paths["h5"])
    m.save(paths["saved_model"])
    return m, paths


@pytest.mark.parametrize("kind", ["keras", "h5", "saved_model"])
def test_lambda_is_refused_unless_unsafe(lambda_files, kind):
    m, paths = lambda_files
    with pytest.raises(UnsafeModelError, match="'triple'.*--unsafe") as info:
        load_model(paths[kind])
    assert str(paths[kind]) in str(info.value)
    loaded = load_model(paths[kind], unsafe=True)
    np.testing.assert_allclose(loaded(X).numpy(), m(X).numpy(), atol=1e-6)


def test_a_custom_function_is_read_once_its_code_is_given(tmp_path):
    from deploykit.backend import keras

    def my_activation(t):
        return t * 2.0

    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation=my_activation, name="custom_act")])
    save_model(m, tmp_path / "custom.keras")
    # tf_keras looks the function up by its name: without its code the file is refused, trusted (unsafe) or not
    for unsafe in (False, True):
        with pytest.raises(ModelLoadError, match="'custom_act'.*custom function 'my_activation', and its code was not"):
            load_model(tmp_path / "custom.keras", unsafe=unsafe)
    with keras.utils.custom_object_scope({"my_activation": my_activation}):
        loaded = load_model(tmp_path / "custom.keras", unsafe=True)
        given = load_model(tmp_path / "custom.keras")  # its code given: trusted as a Keras 3 file's given classes
    np.testing.assert_allclose(loaded(X).numpy(), m(X).numpy(), atol=1e-6)
    np.testing.assert_allclose(given(X).numpy(), m(X).numpy(), atol=1e-6)


#: The book's chapter 12 custom activation, in the user's own module (TensorFlow code, as tf.keras users wrote it).
MY_FUNCTIONS_PY = """
import tensorflow as tf

def my_softplus(z):
    return tf.math.log(1.0 + tf.exp(z))
"""


def test_a_tf_keras_file_naming_the_users_function_loads_with_its_code_given(tmp_path):
    """tf_keras saves ``activation=my_softplus`` by the function's name. ``--custom-objects FILE.py`` gave Keras 3
    files their code but not tf.keras ones: refused, then "tf_keras cannot load it" with --unsafe. Now the file's
    functions are registered in tf_keras too, and the model loads and exports without --unsafe."""
    import importlib.util
    import subprocess
    import sys

    import onnxruntime as ort

    from deploykit.backend import keras

    (tmp_path / "my_functions.py").write_text(MY_FUNCTIONS_PY)
    spec = importlib.util.spec_from_file_location("my_functions", tmp_path / "my_functions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hidden = keras.layers.Dense(4, activation=module.my_softplus)
    m = keras.Sequential([keras.Input((8,)), hidden, keras.layers.Dense(2)])
    save_model(m, tmp_path / "m.keras")
    command = [sys.executable, "-m", "deploykit.cli.main", "export", str(tmp_path / "m.keras")]
    refused = subprocess.run([*command, "--out", str(tmp_path / "no")], capture_output=True, text=True)
    assert refused.returncode == 1 and "custom function 'my_softplus'" in refused.stderr.splitlines()[-1]
    given = [*command, "--out", str(tmp_path / "out"), "--custom-objects", str(tmp_path / "my_functions.py")]
    done = subprocess.run(given, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: X})[0]
    assert np.abs(got - m(X).numpy()).max() <= 1e-5


def test_weights_only_and_subclassed_models_are_refused(model, tmp_path):
    from deploykit.backend import keras

    model.save_weights(tmp_path / "weights.h5")
    with pytest.raises(ModelLoadError, match="weights.h5: an HDF5 file without a model config"):
        load_model(tmp_path / "weights.h5")

    class Custom(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    sub = Custom(name="mine")
    sub(X)
    sub.save(tmp_path / "sub.keras")
    with pytest.raises(UnsupportedLayerError, match="'mine' of type Custom: a subclassed model"):
        load_model(tmp_path / "sub.keras")


@pytest.mark.parametrize("what", ["inputs", "outputs"])
def test_several_inputs_or_outputs_are_packed_at_load_and_compute_the_same(tmp_path, what):
    """deploykit.core.multi_io: one packed input and output (in name order) for every step; the same numbers."""
    import numpy as np

    from deploykit.backend import keras
    from deploykit.core.multi_io_model import packing_of
    from deploykit.io.inputs import as_model

    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    if what == "inputs":
        h = keras.layers.Concatenate()([keras.layers.Dense(5)(a), b])
        model = keras.Model([a, b], keras.layers.Dense(3, activation="softmax")(h))
    else:
        h = keras.layers.Dense(5)(a)
        model = keras.Model(a, [keras.layers.Dense(3, name="head1")(h), keras.layers.Dense(2, name="head2")(h)])
    model.save(tmp_path / "m.keras")
    xa, xb = np.random.default_rng(0).normal(size=(8, 4)), np.random.default_rng(1).normal(size=(8, 3))
    want = model([xa, xb]) if what == "inputs" else np.concatenate([np.asarray(t) for t in model(xa)], axis=1)
    for source in (tmp_path / "m.keras", model):
        packed = as_model(source)
        assert len(packed.inputs) == 1 and len(packed.outputs) == 1
        assert packing_of(packed).layout.input_names() == (["a", "b"] if what == "inputs" else ["a"])
        got = packed(np.concatenate([xa, xb], axis=1) if what == "inputs" else xa)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
