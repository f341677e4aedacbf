"""tf_keras files and objects holding nested models or augmentation layers, read as one flat model (deploykit.io.flat).

Keras 2 users saved the same tutorials' models as the Keras 3 ones (tests/keras3/test_nested.py): a
``data_augmentation`` Sequential inside the model, a frozen keras.applications base called with
``training=False``. They were refused ("a nested model"); now they load flat, compute what tf_keras computes
with the nested model, and export.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import UnsupportedLayerError
from deploykit.io.models import load_model, save_model


def _tutorial(keras):
    layers = keras.layers
    augmentation = keras.Sequential([layers.RandomFlip("horizontal", input_shape=(8, 8, 1)), layers.RandomZoom(0.1)])
    return keras.Sequential(
        [
            augmentation,
            layers.Rescaling(1.0 / 255),
            layers.Conv2D(8, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(10),
        ]
    )


def _transfer(keras):
    base = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), include_top=False, alpha=0.35)
    base.trainable = False
    rng = np.random.default_rng(5)
    for layer in base.layers:  # moving statistics away from 0/1: a BatchNorm lost or run in training would show
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma, beta, rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    inputs = keras.Input((32, 32, 3))
    x = keras.Sequential([keras.layers.RandomFlip("horizontal")], name="data_augmentation")(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Dropout(0.2)(x)))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_tf_keras_tutorial_model_with_augmentation_loads_flat(tmp_path, suffix):
    from deploykit.backend import keras

    model = _tutorial(keras)
    save_model(model, tmp_path / f"tutorial{suffix}")
    loaded = load_model(tmp_path / f"tutorial{suffix}")
    kinds = [type(layer).__name__ for layer in loaded.layers]
    assert not any(k.startswith("Random") or k in ("Sequential", "Functional") for k in kinds), kinds
    x = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 1)).astype(np.float32)
    assert np.abs(loaded(x).numpy() - model(x, training=False).numpy()).max() <= 1e-5


def test_a_tf_keras_transfer_learning_model_loads_flat_with_the_bases_weights(tmp_path):
    from deploykit.backend import keras

    model = _transfer(keras)
    save_model(model, tmp_path / "transfer.h5")
    loaded = load_model(tmp_path / "transfer.h5")
    base = model.layers[3]
    assert base.name.startswith("mobilenetv2") and base.name not in {layer.name for layer in loaded.layers}
    np.testing.assert_array_equal(loaded.get_layer("Conv1").get_weights()[0], base.get_layer("Conv1").get_weights()[0])
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    assert np.abs(loaded(x).numpy() - model(x, training=False).numpy()).max() <= 1e-5


def test_a_nested_tf_keras_object_given_to_the_api_is_read_flat():
    from deploykit.backend import keras
    from deploykit.io.inputs import as_model

    model = _tutorial(keras)
    flat = as_model(model)
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    x = np.random.default_rng(2).uniform(0, 255, (4, 8, 8, 1)).astype(np.float32)
    assert np.abs(flat(x).numpy() - model(x, training=False).numpy()).max() <= 1e-5


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_code_inside_a_nested_model_is_refused_before_loading(tmp_path, suffix):
    """The support table reads inside nested models, before anything is deserialized: a Lambda (code the file
    runs when loaded) in a nested block needs --unsafe as at the top level (the nested refusal used to cover it)."""
    from deploykit.backend import keras
    from deploykit.errors import UnsafeModelError

    block = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2.0, name="doubler")], name="b")
    save_model(keras.Sequential([keras.Input((4,)), block, keras.layers.Dense(2)]), tmp_path / f"lambda{suffix}")
    with pytest.raises(UnsafeModelError, match="doubler"):
        load_model(tmp_path / f"lambda{suffix}")


def _read_two_inputs(model, given: str, tmp_path):
    """A model of inputs ``left`` and ``right`` as deploykit reads it (saved with that suffix, or the object itself),
    checked against the model on random inputs."""
    from deploykit.core.multi_io_model import packing_of
    from deploykit.io.inputs import as_model

    if given == "object":
        flat = as_model(model)
    else:
        save_model(model, tmp_path / f"two_inputs{given}")
        flat = load_model(tmp_path / f"two_inputs{given}")
    rng = np.random.default_rng(4)
    xs = {n: rng.normal(size=(8, 4)).astype(np.float32) for n in ("left", "right")}
    got = flat(packing_of(flat).layout.join_inputs(xs)).numpy()
    assert np.abs(got - model([xs["left"], xs["right"]]).numpy()).max() <= 1e-6
    return flat


@pytest.mark.parametrize("given", [".keras", ".h5", "object"])
def test_a_sub_model_called_twice_is_one_copy_per_call(tmp_path, given):
    """A siamese network's shared encoder (keras.io's image similarity examples: one sub-model called on each
    image), here a functional encoder holding a Sequential block, called twice. It was refused ("a nested model
    called 2 times"); each call is now a copy of the encoder whose layers, at every depth, are renamed and hold the
    shared weights, and the model computes what tf_keras computes."""
    from deploykit.backend import keras

    block = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, activation="relu", name="mix")], name="block")
    encoder_in = keras.Input((4,))
    encoder = keras.Model(encoder_in, block(keras.layers.Dense(6, name="embed")(encoder_in)), name="encoder")
    left, right = keras.Input((4,), name="left"), keras.Input((4,), name="right")
    distance = keras.layers.Subtract()([encoder(left), encoder(right)])
    model = keras.Model([left, right], keras.layers.Dense(1, activation="sigmoid")(distance))
    flat = _read_two_inputs(model, given, tmp_path)
    for name in ("embed", "mix"):
        first, second = (flat.get_layer(n).get_weights() for n in (name, f"{name}_call2"))
        assert all(np.array_equal(a, b) for a, b in zip(first, second))


@pytest.mark.slow
def test_a_flattened_tf_keras_model_exports_as_it_computes(tmp_path, cli):
    import onnxruntime as ort

    from deploykit.backend import keras

    model = _transfer(keras)
    save_model(model, tmp_path / "transfer.h5")
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, (150, 32, 32, 3)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=rng.integers(0, 3, len(x)))
    done = cli("export", tmp_path / "transfer.h5", "--data", tmp_path / "data.npz", "--formats", "onnx",
               "--quantize", "float32", "--out", tmp_path / "out")  # fmt: skip
    assert done.returncode == 0, done.stderr
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.abs(got - model(x, training=False).numpy()).max() <= 1e-4


def test_a_nested_text_model_object_is_checked_on_token_ids_and_says_what_was_done(caplog):
    """Any length of token ids into a nested Embedding block: the flat model is checked on ids below the
    vocabulary (random floats would be no ids), and an object given to the API says what flattening did."""
    from deploykit.backend import keras
    from deploykit.io.inputs import as_model

    block = keras.Sequential([keras.layers.Embedding(50, 4), keras.layers.GlobalAveragePooling1D()], name="text")
    inputs = keras.Input((None,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(block(inputs)))
    with caplog.at_level("INFO", logger="deploykit.core.nested"):
        flat = as_model(model)
    assert [type(layer).__name__ for layer in flat.layers][1:] == ["Embedding", "GlobalAveragePooling1D", "Dense"]
    assert "nested models read as one graph: text" in caplog.text
    ids = np.random.default_rng(4).integers(0, 50, (6, 9)).astype(np.float32)
    assert np.abs(flat(ids).numpy() - model(ids).numpy()).max() <= 1e-6


def test_a_tf_keras_object_reading_strings_is_refused_by_the_table():
    """The layer table refuses layers that read strings wherever they are read: a file (tests/keras3/test_nested.py)
    or a tf_keras object given to the API (accepted before, to fail inside a later step)."""
    from deploykit.backend import keras
    from deploykit.io.inputs import as_model

    lookup = keras.layers.StringLookup(vocabulary=["a", "b"], name="lookup")
    inputs = keras.Input((1,), dtype="string")
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.CategoryEncoding(3)(lookup(inputs))))
    with pytest.raises(UnsupportedLayerError, match="'lookup' of type StringLookup: looks strings up"):
        as_model(model)


@pytest.mark.parametrize("given", [".h5", ".keras", "object"])
def test_a_tf_keras_siamese_model_is_read_with_one_layer_per_call(tmp_path, given):
    """tf_keras files and objects with a layer called twice (its weights shared) load as one layer per call with
    the same weights, and compute what the model computes (refused before: "called 2 times")."""
    from deploykit.backend import keras

    left, right = keras.Input((4,), name="left"), keras.Input((4,), name="right")
    tower = keras.layers.Dense(3, activation="tanh", name="tower")
    model = keras.Model([left, right], keras.layers.Dense(2)(keras.layers.Subtract()([tower(left), tower(right)])))
    flat = _read_two_inputs(model, given, tmp_path)
    weights = [flat.get_layer(n).get_weights() for n in ("tower", "tower_call2")]
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
