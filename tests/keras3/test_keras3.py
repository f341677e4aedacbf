"""Keras 3 files (TF >= 2.16's default) imported into tf_keras by deploykit.

Keras 3 (``import keras``, TensorFlow backend) and tf_keras run in the same
process here: deploykit.backend sets TF_USE_LEGACY_KERAS=1, which only changes
what ``tf.keras`` means; ``import keras`` still gives Keras 3.
"""

from __future__ import annotations

import os
import random
import re

import numpy as np
import pytest

from deploykit.errors import ModelLoadError, UnsafeModelError, UnsupportedLayerError
from deploykit.io.models import load_model, read_model_file, save_model
from tests.helpers import randomize_batchnorm

RNG = np.random.default_rng(0)
X12 = RNG.normal(2.0, 3.0, size=(64, 12)).astype("float32")


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    assert keras.__version__.startswith("3.")
    return keras


def _randomize(model, seed=0):
    """Non-trivial BatchNorm statistics and PReLU slopes, so the comparison means something."""
    randomize_batchnorm(model, seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "PReLU":
            layer.set_weights([rng.uniform(0.05, 0.5, w.shape).astype("float32") for w in layer.get_weights()])


def _chapter_model(k3):
    """Sequential with every importable layer, regularizers and non-default options."""
    norm = k3.layers.Normalization()
    norm.adapt(X12)
    model = k3.Sequential(
        [
            k3.Input(shape=(12,)),
            norm,
            k3.layers.Dense(
                16, kernel_initializer="he_normal", kernel_regularizer=k3.regularizers.L2(0.01), name="hidden1"
            ),
            k3.layers.BatchNormalization(momentum=0.9, epsilon=1e-3),
            k3.layers.LeakyReLU(negative_slope=0.2, name="leaky"),
            k3.layers.Dropout(0.3),
            k3.layers.Dense(
                16,
                bias_regularizer=k3.regularizers.L1L2(l1=1e-4, l2=1e-3),
                kernel_constraint=k3.constraints.MaxNorm(3.0),
            ),
            k3.layers.PReLU(),
            k3.layers.ELU(alpha=0.7, name="elu"),
            k3.layers.Dense(8, activation="selu", kernel_initializer="lecun_normal"),
            k3.layers.AlphaDropout(0.1),
            k3.layers.Activation("tanh"),
            k3.layers.Dense(4, activation="softmax"),
        ],
        name="chapter",
    )
    _randomize(model)
    return model


def _functional_model(k3):
    """A functional chain on 2-D inputs with constant standardization, Flatten and Reshape."""
    inputs = k3.Input(shape=(3, 4))
    x = k3.layers.Flatten()(inputs)
    x = k3.layers.Normalization(mean=np.linspace(-1, 1, 12), variance=np.linspace(0.5, 3, 12), name="standardize")(x)
    x = k3.layers.Dense(6, activation="elu")(x)
    x = k3.layers.BatchNormalization()(x)
    x = k3.layers.Reshape((2, 3))(x)
    x = k3.layers.Flatten()(x)
    x = k3.layers.Dropout(0.2)(x)
    outputs = k3.layers.Dense(3, activation="softmax")(x)
    model = k3.Model(inputs, outputs, name="functional_chain")
    _randomize(model, seed=1)
    return model


def _save(model, path):
    model.save(path)
    return path


def _max_diff(k3, path, model, x):
    expected = k3.ops.convert_to_numpy(k3.saving.load_model(path, compile=False)(x, training=False))
    return float(np.max(np.abs(expected - model(x, training=False).numpy())))


@pytest.fixture(scope="module")
def chapter_file(k3, tmp_path_factory):
    """The chapter model saved by Keras 3 once for the tests that only read the file (building and saving it
    is a third of a second of CPU each time)."""
    return _save(_chapter_model(k3), tmp_path_factory.mktemp("chapter") / "chapter.keras")


@pytest.fixture(scope="module")
def chapter_imported(chapter_file):
    """The chapter file imported into tf_keras, for the tests that only read or save the imported model."""
    return load_model(chapter_file)


def test_keras3_file_is_detected(chapter_file):
    path = chapter_file
    info = read_model_file(path)
    assert info.is_keras3 and info.keras_version.startswith("3.")


def test_sequential_round_trip_matches_keras3(k3, chapter_file, chapter_imported):
    from deploykit.backend import is_tf_keras_model

    path, model = chapter_file, chapter_imported
    assert is_tf_keras_model(model)
    assert [type(l).__name__ for l in model.layers] == [
        "Normalization",
        "Dense",
        "BatchNormalization",
        "LeakyReLU",
        "Dropout",
        "Dense",
        "PReLU",
        "ELU",
        "Dense",
        "AlphaDropout",
        "Activation",
        "Dense",
    ]
    assert _max_diff(k3, path, model, X12) <= 1e-5
    # config differences mapped, not dropped
    layers = {l.name: l for l in model.layers}
    assert layers["leaky"].get_config()["alpha"] == pytest.approx(0.2)
    assert layers["elu"].get_config()["alpha"] == pytest.approx(0.7)
    hidden = layers["hidden1"].get_config()
    assert hidden["kernel_initializer"]["class_name"] == "HeNormal"
    assert hidden["kernel_regularizer"]["config"]["l2"] == pytest.approx(0.01)
    assert model.layers[1 + 4].get_config()["kernel_constraint"]["config"]["max_value"] == pytest.approx(3.0)
    assert model.layers[2].get_config()["momentum"] == pytest.approx(0.9)
    assert model.layers[0].mean.numpy().ravel() == pytest.approx(X12.mean(axis=0), rel=1e-4, abs=1e-4)


def test_functional_chain_and_h5_round_trip(k3, tmp_path):
    source = _functional_model(k3)
    for name in ("functional.keras", "functional.h5"):
        path = _save(source, tmp_path / name)
        model = load_model(path)
        x = RNG.normal(size=(32, 3, 4)).astype("float32")
        assert model.input_shape == (None, 3, 4)
        assert _max_diff(k3, path, model, x) <= 1e-5
        assert model.get_layer("standardize").get_config()["variance"][-1] == pytest.approx(3.0)


def test_imported_model_saves_and_reloads_as_tf_keras(chapter_imported, tmp_path):
    model = chapter_imported
    save_model(model, tmp_path / "tf_keras.keras")
    assert not read_model_file(tmp_path / "tf_keras.keras").is_keras3
    again = load_model(tmp_path / "tf_keras.keras")
    assert np.array_equal(again(X12, training=False).numpy(), model(X12, training=False).numpy())


def test_import_leaves_environment_random_state_and_tf_keras_alone(chapter_file):
    from deploykit.backend import keras, tf
    from deploykit.keras3.convert import keras3_context

    path = chapter_file
    env = dict(os.environ)
    load_model(path)
    assert dict(os.environ) == env
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    # Keras 3's loading draws seeds from Python's random; the importer puts the states back
    state, np_state = random.getstate(), np.random.get_state()[1].copy()
    with keras3_context() as keras3:
        keras3.saving.load_model(path, compile=False)
    assert random.getstate() == state and np.array_equal(np.random.get_state()[1], np_state)
    # tf.keras is still tf_keras, and tf_keras still trains
    assert type(tf.keras.layers.Dense(1)).__module__.startswith("tf_keras")
    assert keras.backend.floatx() == "float32"
    m = keras.Sequential([keras.Input((12,)), keras.layers.Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = m.fit(X12, (X12[:, 0] > 2).astype("int64"), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_mismatching_outputs_are_refused_with_the_measured_difference(k3, tmp_path, monkeypatch):
    # a rebuild that computes something else (here: hard_sigmoid rebuilt as hard_tanh) is caught by the output check
    from deploykit.keras3 import activations as keras3_activations

    monkeypatch.setitem(keras3_activations.EXPANSIONS, "hard_sigmoid", keras3_activations.EXPANSIONS["hard_tanh"])
    model = k3.Sequential([k3.Input((12,)), k3.layers.Dense(4, activation="hard_sigmoid")])
    path = _save(model, tmp_path / "hard.keras")
    with pytest.raises(ModelLoadError, match=r"differs from it by ([0-9.e+-]+)") as info:
        load_model(path)
    measured = float(re.search(r"differs from it by ([0-9.e+-]+)", str(info.value)).group(1))
    assert measured > 1e-5 and "tolerance 1e-05" in str(info.value)


def _unsupported_cases(k3):
    @k3.saving.register_keras_serializable(package="tests")
    class Scale(k3.layers.Layer):
        def call(self, t):
            return t * 2.0

    k3.saving.get_custom_objects().pop("tests>Scale")  # saved under its name, its code not given to the loader
    return {
        "custom_layer": (
            k3.Sequential([k3.Input((8,)), Scale(name="scale")]),
            "'scale' of type tests>Scale: a custom layer",
        ),
        "mixed": (
            k3.Sequential([k3.Input((8,)), k3.layers.Dense(2, dtype="mixed_float16", name="half")]),
            "'half' of type Dense: dtype policy 'mixed_float16'",
        ),
        "activation": (
            k3.Sequential([k3.Input((8,)), k3.layers.Dense(2, activation="sparsemax", name="sparse")]),
            "activation 'sparsemax' has no tf_keras equivalent",
        ),
    }


def test_unsupported_keras3_models_are_named(k3, tmp_path):
    for what, (model, message) in _unsupported_cases(k3).items():
        path = _save(model, tmp_path / f"{what}.keras")
        with pytest.raises(UnsupportedLayerError) as info:
            load_model(path)
        assert message in str(info.value), f"{what}: {info.value}"


@pytest.mark.filterwarnings("ignore:The object being serialized includes a `lambda`")
def test_keras3_lambda_and_custom_code_need_unsafe(k3, tmp_path):
    def my_activation(t):
        return t * 2.0

    lam = _save(
        k3.Sequential([k3.Input((8,)), k3.layers.Lambda(lambda t: t + 1.0, name="shift")]), tmp_path / "lambda.keras"
    )
    fn = _save(
        k3.Sequential([k3.Input((8,)), k3.layers.Dense(2, activation=my_activation, name="act")]), tmp_path / "fn.keras"
    )
    with pytest.raises(UnsafeModelError, match="'shift'.*--unsafe"):
        load_model(lam)
    with pytest.raises(
        UnsupportedLayerError,
        match="'act' of type Dense: it computes with the custom function "
        "'my_activation', and its code was not given: pass the Python file defining it",
    ):
        load_model(fn)  # its code given, it would be traced (tests/keras3/test_inline.py)
    anon = _save(
        k3.Sequential([k3.Input((8,)), k3.layers.Dense(2, activation=lambda t: t, name="anon")]),
        tmp_path / "anon.keras",
    )
    with pytest.raises(UnsafeModelError, match="'anon'.*activation given as Python code"):
        load_model(anon)
    # trusted: its function is traced into what it computes (deploykit.keras3.inline), no Lambda left
    read = load_model(lam, unsafe=True)
    assert [type(layer).__name__ for layer in read.layers] == ["Rescaling"]
    x = np.linspace(-2, 2, 16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_allclose(read(x).numpy(), x + 1.0, atol=1e-6)
    with pytest.raises(UnsupportedLayerError, match="'act' of type Dense: it computes with the custom function"):
        load_model(fn, unsafe=True)  # trusting the file does not give the function's code


# --- graphs in, Keras 3 files out ----------------------------------------------------------------


def _keras3_cnn(k3):
    """A Keras 3 CNN: Conv2D + BN + ReLU, MaxPooling2D, GlobalAveragePooling2D, Dropout, Dense."""
    model = k3.Sequential(
        [
            k3.Input((8, 8, 1)),
            k3.layers.Conv2D(4, 3, padding="same"),
            k3.layers.BatchNormalization(),
            k3.layers.ReLU(),
            k3.layers.MaxPooling2D(),
            k3.layers.GlobalAveragePooling2D(),
            k3.layers.Dropout(0.3),
            k3.layers.Dense(3, activation="softmax"),
        ],
        name="k3_cnn",
    )
    _randomize(model, seed=2)
    return model


def _keras3_residual(k3):
    inputs = k3.Input((6, 6, 2))
    a = k3.layers.Conv2D(4, 3, padding="same", activation="relu", name="a")(inputs)
    b = k3.layers.BatchNormalization(name="bn")(k3.layers.Conv2D(4, 3, padding="same", name="b")(a))
    x = k3.layers.Add(name="skip")([a, b])
    x = k3.layers.Dropout(0.2)(k3.layers.GlobalAveragePooling2D()(x))
    model = k3.Model(inputs, k3.layers.Dense(3, activation="softmax")(x), name="k3_residual")
    _randomize(model, seed=3)
    return model


def _load_in_keras3_subprocess(path, x) -> np.ndarray:
    """Outputs of ``path`` loaded by Keras 3 in a fresh process without TF_USE_LEGACY_KERAS."""
    import os
    import subprocess
    import sys

    np.save(path.with_suffix(".x.npy"), x)
    code = (
        "import sys, numpy as np, keras; m = keras.saving.load_model(sys.argv[1]); "
        "np.save(sys.argv[2], keras.ops.convert_to_numpy(m(np.load(sys.argv[3]), training=False)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = path.with_suffix(".y.npy")
    run = subprocess.run(
        [sys.executable, "-c", code, str(path), str(out), str(path.with_suffix(".x.npy"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return np.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("build", [_keras3_cnn, _keras3_residual])
def test_keras3_graphs_in_fold_and_come_back_as_keras3_files(k3, tmp_path, build):
    from deploykit.fold import fold_batchnorm
    from deploykit.keras3.convert import save_keras3

    source = build(k3)
    path = _save(source, tmp_path / "in.keras")
    model = load_model(path)
    x = np.random.default_rng(4).normal(size=(16, *source.input_shape[1:])).astype("float32")
    assert _max_diff(k3, path, model, x) <= 1e-5
    folded, report = fold_batchnorm(model)
    assert report.folded and "BatchNormalization" not in [type(l).__name__ for l in folded.layers]
    out = save_keras3(folded, tmp_path / "model.keras")
    expected = k3.ops.convert_to_numpy(source(x, training=False))
    assert np.abs(_load_in_keras3_subprocess(out, x) - expected).max() <= 1e-5
    assert read_model_file(out).is_keras3


def test_tf_keras_models_save_as_keras3_with_every_table_layer(tmp_path):
    from deploykit.keras3.convert import save_keras3
    from tests.core import models

    for name in ("every_layer", "residual"):
        model = models.shared(name)  # read only
        out = save_keras3(model, tmp_path / f"{name}.keras")
        assert read_model_file(out).is_keras3
        back = load_model(out)  # and deploykit reads it back through the Keras 3 import
        x = np.random.default_rng(0).normal(size=(4, *model.input_shape[1:])).astype("float32")
        assert np.abs(back(x, training=False).numpy() - model(x, training=False).numpy()).max() <= 1e-5


KERAS3_ONLY_ACTIVATIONS = ["hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "log_sigmoid", "tanh_shrink", "celu"]


@pytest.mark.parametrize("activation", KERAS3_ONLY_ACTIVATIONS)
def test_keras3_activations_tf_keras_lacks_are_rebuilt_exactly(k3, tmp_path, activation):
    """Keras 3 activations tf_keras lacks (or computes otherwise: hard_sigmoid) import as built-in layers, exactly,
    on inputs wide enough to reach every piece of them (|pre-activation| well past 3), as a layer's activation
    and as an Activation layer, and come back as a Keras 3 file that computes the same."""
    from deploykit.keras3.convert import save_keras3

    source = k3.Sequential(
        [
            k3.Input((6,)),
            k3.layers.Dense(8, activation=activation, name="hidden"),
            k3.layers.Dense(5),
            k3.layers.Activation(activation, name="act"),
            k3.layers.Dense(3, activation="softmax"),
        ]
    )
    x = np.random.default_rng(1).normal(0, 6, size=(256, 6)).astype("float32")
    hidden = k3.ops.convert_to_numpy(source.get_layer("hidden").kernel)
    assert np.abs(x @ hidden).max() > 6  # the clip regions of the hard activations are reached
    path = _save(source, tmp_path / f"{activation}.keras")
    model = load_model(path)
    assert _max_diff(k3, path, model, x) <= 1e-5
    out = save_keras3(model, tmp_path / "back.keras")
    expected = k3.ops.convert_to_numpy(source(x, training=False))
    assert np.abs(k3.ops.convert_to_numpy(k3.saving.load_model(out)(x, training=False)) - expected).max() <= 1e-5


def test_a_keras3_model_with_an_adapted_normalization_goes_back_to_keras3_computing_the_same(k3, tmp_path):
    """The chapter's model starts with an adapted Normalization (one feature constant: variance 0); the Keras 3
    file written back must normalize with those statistics, in memory (the check) and once loaded."""
    from deploykit.keras3.convert import save_keras3

    x = X12.copy()
    x[:, 3] = 5.0  # a constant feature, as a border pixel: Keras divides it by epsilon
    norm = k3.layers.Normalization()
    norm.adapt(x)
    source = k3.Sequential([k3.Input((12,)), norm, k3.layers.Dense(8, activation="elu"), k3.layers.Dense(3)])
    path = _save(source, tmp_path / "norm.keras")
    model = load_model(path)
    out = save_keras3(model, tmp_path / "back.keras")
    probe = X12[:16]
    expected = k3.ops.convert_to_numpy(source(probe, training=False))
    got = k3.ops.convert_to_numpy(k3.saving.load_model(out)(probe, training=False))
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, float(np.sqrt(np.mean(expected**2))))


@pytest.mark.parametrize("what", ["inputs", "outputs"])
def test_keras3_models_with_several_inputs_or_outputs_import_and_save_back(k3, tmp_path, what):
    """Imported with their own tensors, packed for the steps (deploykit.core.multi_io), saved back as built."""
    from deploykit.io.models import save_model_like

    a, b = k3.Input((4,), name="a"), k3.Input((3,), name="b")
    if what == "inputs":
        model = k3.Model([a, b], k3.layers.Dense(3)(k3.layers.Concatenate()([a, b])))
        probe = [X12[:16, :4], X12[:16, 4:7]]
    else:
        h = k3.layers.Dense(5)(a)
        model = k3.Model(a, [k3.layers.Dense(3, name="h1")(h), k3.layers.Dense(2, name="h2")(h)])
        probe = X12[:16, :4]
    packed = load_model(_save(model, tmp_path / "m.keras"))
    assert len(packed.inputs) == 1 and len(packed.outputs) == 1
    back = k3.saving.load_model(save_model_like(packed, tmp_path / "back.keras", True))
    assert [t.name for t in back.inputs] == [t.name for t in model.inputs]
    for got, want in zip(*(k3.tree.flatten(m(probe)) for m in (back, model))):
        np.testing.assert_allclose(k3.ops.convert_to_numpy(got), k3.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)


def test_a_keras3_model_reading_a_category_code_one_hot_imports(tmp_path):
    """keras.io's structured-data pattern without strings: an integer code one-hot encoded by CategoryEncoding
    beside numeric columns. The import's rebuild check drew standard-normal codes, which CategoryEncoding refuses
    ("Input values must be in the range 0 <= values < num_tokens"); it now draws codes below num_tokens."""
    import keras

    from deploykit.core.multi_io_model import packing_of
    from deploykit.io.models import load_model

    numeric, code = keras.Input((4,), name="numeric"), keras.Input((1,), dtype="int64", name="code")
    joined = keras.layers.Concatenate()([numeric, keras.layers.CategoryEncoding(9, output_mode="one_hot")(code)])
    model = keras.Model([numeric, code], keras.layers.Dense(3, activation="softmax")(joined))
    model.save(tmp_path / "m.keras")
    imported = load_model(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    xs = {"numeric": rng.normal(size=(8, 4)).astype(np.float32), "code": rng.integers(0, 9, (8, 1))}
    packed = packing_of(imported).layout.join_inputs({k: v.astype(np.float32) for k, v in xs.items()})
    assert np.abs(imported(packed).numpy() - np.asarray(model(xs))).max() <= 1e-5


def test_a_functional_model_resizing_and_cropping_its_input_imports(tmp_path):
    """Keras 3 saves every call of its data layers (Resizing, CenterCrop) with ``training=True``, whatever the model's
    code said: a functional model resizing its input was refused ("called with {'training': True}")."""
    import keras

    from deploykit.io.models import load_model

    inputs = keras.Input((12, 12, 1))
    x = keras.layers.CenterCrop(10, 10)(keras.layers.Resizing(14, 14)(inputs))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.save(tmp_path / "m.keras")
    imported = load_model(tmp_path / "m.keras")
    xs = np.random.default_rng(0).uniform(0, 1, (8, 12, 12, 1)).astype(np.float32)
    assert np.abs(imported(xs).numpy() - np.asarray(model(xs))).max() <= 1e-5
