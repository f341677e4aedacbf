"""The chapter's MCDropout / MCAlphaDropout read from the file alone as Dropout / AlphaDropout (no code run, no
unsafe)."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.custom_dropout import assumption, dropout_base
from deploykit.errors import UnsafeModelError, UnsupportedLayerError
from deploykit.io.models import load_model

K3_DTYPE = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _k3(class_name, registered, **config):
    return {
        "module": None,
        "class_name": class_name,
        "registered_name": registered,
        "config": {
            "name": "mc",
            "trainable": True,
            "dtype": K3_DTYPE,
            "rate": 0.3,
            "seed": None,
            "noise_shape": None,
            **config,
        },
    }


def test_keras3_registered_subclasses_are_recognized():
    assert dropout_base(_k3("MCDropout", "Custom>MCDropout")) == "Dropout"
    assert dropout_base(_k3("MCAlphaDropout", "Custom>MCAlphaDropout")) == "AlphaDropout"
    assert dropout_base({**_k3("MCDropout", None), "class_name": "Custom>MCDropout"}) == "Dropout"  # Keras 3 .h5


def test_tf_keras_subclasses_are_recognized():
    h5 = {
        "class_name": "MCDropout",
        "config": {"name": "mc", "trainable": True, "dtype": "float32", "rate": 0.3, "noise_shape": None, "seed": None},
    }
    alpha = {
        "class_name": "MCAlphaDropout",
        "config": {"name": "a", "trainable": True, "dtype": "float32", "rate": 0.1, "seed": None},
    }
    assert dropout_base(h5) == "Dropout"
    assert dropout_base(alpha) == "AlphaDropout"
    assert dropout_base({**h5, "module": None, "registered_name": "MCDropout"}) == "Dropout"  # tf_keras .keras


def test_anything_else_is_not_recognized():
    assert dropout_base(_k3("MCDropout", "Custom>MCDropout", temperature=2.0)) is None  # a key Dropout lacks
    bare = _k3("MCDropout", "Custom>MCDropout")
    del bare["config"]["seed"]
    assert dropout_base(bare) is None  # a key missing
    assert dropout_base(_k3("MyNoise", "Custom>MyNoise")) is None  # the name says nothing of Dropout
    assert dropout_base(_k3("MyGaussianDropout", "Custom>MyGaussianDropout")) is None
    keras_own = {
        "module": "keras.layers",
        "class_name": "Dropout",
        "registered_name": None,
        "config": _k3("x", None)["config"],
    }
    assert dropout_base(keras_own) is None  # Keras' own Dropout is not a custom class
    assert dropout_base({"class_name": "Dropout", "config": {"name": "d", "rate": 0.1}}) is None


def _book_models(tmp_path, k3):
    """Chapter 11's MC Dropout classes, written as the book writes them, saved as Keras 3 and tf_keras users do."""
    from deploykit.backend import keras as tfk

    @k3.saving.register_keras_serializable(package="Chapter11Test")
    class MCDropout(k3.layers.Dropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    @k3.saving.register_keras_serializable(package="Chapter11Test")
    class MCAlphaDropout(k3.layers.AlphaDropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    class TfMCDropout(tfk.layers.Dropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    TfMCDropout.__name__ = "MCDropout"

    class TfMCAlphaDropout(tfk.layers.AlphaDropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    TfMCAlphaDropout.__name__ = "MCAlphaDropout"
    paths = {}
    for keras, dropout, alpha, tag in (
        (k3, MCDropout, MCAlphaDropout, "k3"),
        (tfk, TfMCDropout, TfMCAlphaDropout, "tf"),
    ):
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(16, activation="selu"),
                dropout(0.3),
                keras.layers.Dense(8, activation="selu"),
                alpha(0.1),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
        for suffix in ("keras", "h5"):
            paths[f"{tag}.{suffix}"] = tmp_path / f"mc_{tag}.{suffix}"
            model.save(paths[f"{tag}.{suffix}"])
        paths[f"{tag}.model"] = model
    return paths


@pytest.mark.slow  # saves four models in both Keras and imports two Keras 3 files
def test_book_files_load_without_unsafe(tmp_path, caplog):
    import keras as k3

    import deploykit.backend  # noqa: F401

    paths = _book_models(tmp_path, k3)
    x = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    for name in ("k3.keras", "k3.h5", "tf.keras", "tf.h5"):
        caplog.clear()
        model = load_model(paths[name])
        assert [type(l).__name__ for l in model.layers] == ["Dense", "Dropout", "Dense", "AlphaDropout", "Dense"], name
        line = assumption(model)
        assert line and "MCDropout" in line and "MCAlphaDropout" in line and "inference mode" in line, name
        assert any("MCDropout" in r.getMessage() for r in caplog.records), name  # said once, as a warning
        dense = [l for l in paths[name.split(".")[0] + ".model"].layers if "Dropout" not in type(l).__mro__[1].__name__]
        expected = np.asarray(dense[2](dense[1](dense[0](x))))  # deterministic: the dropouts as identity
        assert np.abs(model(x, training=False).numpy() - expected).max() <= 1e-5, name


def test_an_unrecognized_custom_layer_is_still_refused(tmp_path):
    import json
    import zipfile

    config = {
        "class_name": "Sequential",
        "config": {
            "name": "s",
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "registered_name": None,
                    "config": {"batch_shape": [None, 4], "dtype": "float32", "name": "input"},
                },
                _k3("MCDropout", "Custom>MCDropout", temperature=2.0),
            ],
        },
    }
    path = tmp_path / "custom.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.10.0"}))
    with pytest.raises((UnsupportedLayerError, UnsafeModelError), match="MCDropout"):
        load_model(path)


def test_the_chapters_mc_dropout_inside_a_nested_block_is_recognized(tmp_path):
    """A block (Sequential) holding the chapter's MCDropout, nested in the model: recognized there too, before
    the nested models are flattened (it was refused as a custom class inside a nested model)."""
    import keras as k3

    import deploykit.backend  # noqa: F401

    @k3.saving.register_keras_serializable(package="Chapter11Nested")
    class MCDropout(k3.layers.Dropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    block = k3.Sequential([k3.Input((6,)), k3.layers.Dense(8, activation="elu"), MCDropout(0.2)], name="block")
    inputs = k3.Input((6,))
    model = k3.Model(inputs, k3.layers.Dense(3, activation="softmax")(block(inputs)))
    model.save(tmp_path / "nested_mc.keras")
    loaded = load_model(tmp_path / "nested_mc.keras")
    assert [type(layer).__name__ for layer in loaded.layers][-3:] == ["Dense", "Dropout", "Dense"]
    line = assumption(loaded)
    assert line and "MCDropout" in line and "as Dropout" in line


@pytest.mark.parametrize("given", ["k3.keras", "tf.h5", "tf.keras"])
def test_keras_dropout_called_with_training_true_is_read_as_mc_dropout(tmp_path, given):
    """The functional MC Dropout idiom, ``Dropout(0.3)(x, training=True)``, was refused ("called with {'training':
    True}"). It is read as a Dropout, said in one warning line as the chapter's MCDropout is: the model loaded is
    deterministic (the dropout runs in inference mode) and computes what the user's model computes at inference."""
    import keras as k3

    from deploykit.backend import keras as tfk
    from deploykit.io.models import save_model

    keras = k3 if given.startswith("k3") else tfk
    inputs = keras.Input((4,))
    hidden = keras.layers.Dropout(0.3)(keras.layers.Dense(8, activation="relu")(inputs), training=True)
    user = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    path = tmp_path / f"m.{given.split('.')[1]}"
    if given.startswith("k3"):
        user.save(path)
    else:
        save_model(user, path)
    model = load_model(path)
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    first, second = model(x).numpy(), model(x).numpy()
    assert np.array_equal(first, second)  # no mask drawn: the dropout is identity when deploykit predicts
    layers = [layer for layer in user.layers if type(layer).__name__ == "Dense"]
    expected = np.asarray(layers[1](layers[0](x)))
    assert np.abs(first - expected).max() <= 1e-5
    assert "called with training=True" in (assumption(model) or "")


def test_a_tf_keras_model_object_calling_dropout_with_training_true_is_read_and_left_as_it_was():
    """The same idiom in a live tf_keras model given to the API (it was refused: files were read, objects not). The
    model read is deterministic; the user's own object keeps its rate and still draws masks."""
    from deploykit.backend import keras
    from deploykit.io.inputs import as_model

    inputs = keras.Input((4,))
    hidden = keras.layers.Dropout(0.3)(keras.layers.Dense(8, activation="relu")(inputs), training=True)
    user = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    model = as_model(user)
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    assert np.array_equal(model(x).numpy(), model(x).numpy())
    dense = [layer for layer in user.layers if type(layer).__name__ == "Dense"]
    assert np.abs(model(x).numpy() - np.asarray(dense[1](dense[0](x)))).max() <= 1e-5
    assert "called with training=True" in (assumption(model) or "")
    assert user.layers[2].rate == 0.3 and not np.array_equal(user(x).numpy(), user(x).numpy())
