"""build_model: each preset's initializers, activations, BatchNorm / (Alpha)Dropout, and input standardization."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.data.dataset import Dataset
from deploykit.training import TrainConfig, build_model


def _types(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def _hidden_dense(model):
    return [layer for layer in model.layers if type(layer).__name__ == "Dense"][:-1]


def _initializer(layer) -> str:
    return type(layer.kernel_initializer).__name__


def test_default_preset_deep_net_uses_he_elu_and_batchnorm_before_the_activation(digits):
    model = build_model(TrainConfig(hidden=(32, 32, 32), dropout=0.2, dropout_layers=2), digits)
    assert _types(model) == [
        "Normalization",
        "Dense",
        "BatchNormalization",
        "Activation",
        "Dense",
        "BatchNormalization",
        "Activation",
        "Dropout",
        "Dense",
        "BatchNormalization",
        "Activation",
        "Dropout",
        "Dense",
    ]
    for dense in _hidden_dense(model):
        assert _initializer(dense) == "HeNormal"
        assert not dense.use_bias  # BatchNormalization's beta is the bias
    assert {layer.get_config()["activation"] for layer in model.layers if type(layer).__name__ == "Activation"} == {
        "elu"
    }
    assert model.layers[-1].get_config()["activation"] == "softmax"
    assert model.output_shape == (None, 10)


def test_default_preset_shallow_net_has_no_batchnorm(digits):
    model = build_model(TrainConfig(hidden=(32, 16), dropout=0.3, dropout_layers="all"), digits)
    assert _types(model) == ["Normalization", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [(_initializer(d), d.get_config()["activation"]) for d in _hidden_dense(model)] == [("HeNormal", "elu")] * 2
    assert {layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"} == {0.3}


def test_batchnorm_flag_forces_it(digits):
    assert "BatchNormalization" in _types(build_model(TrainConfig(hidden=(16,), batchnorm="on"), digits))
    assert "BatchNormalization" not in _types(build_model(TrainConfig(hidden=(16,) * 4, batchnorm="off"), digits))


def test_selu_preset_uses_lecun_selu_alpha_dropout_and_no_batchnorm(digits):
    model = build_model(TrainConfig(preset="selu", hidden=(32, 32, 32, 32), dropout=0.1, dropout_layers="all"), digits)
    assert _types(model) == ["Normalization"] + ["Dense", "AlphaDropout"] * 4 + ["Dense"]
    for dense in _hidden_dense(model):
        assert _initializer(dense) == "LecunNormal"
        assert dense.get_config()["activation"] == "selu"
    assert "Dropout" not in _types(build_model(TrainConfig(preset="selu", dropout=0.0), digits))


def test_l2_regularizes_every_dense_kernel(digits):
    model = build_model(TrainConfig(hidden=(16, 16), l2=1e-3), digits)
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    assert all(layer.kernel_regularizer is not None for layer in dense)
    assert len(model.losses) == len(dense)
    assert all(
        layer.kernel_regularizer is None for layer in _hidden_dense(build_model(TrainConfig(hidden=(16,)), digits))
    )


def test_model_standardizes_raw_inputs_with_training_statistics():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 3, 4)) * 7 + 50).astype(np.float32)
    x[:, 0, 0] = 3.0  # constant in training: centred, not blown up
    y = rng.integers(0, 3, 200)
    data = Dataset("grid.npz", x[:120], y[:120], x[120:160], y[120:160], x[160:], y[160:], ("a", "b", "c"))
    model = build_model(TrainConfig(hidden=(8,)), data)
    assert _types(model)[:2] == ["Flatten", "Normalization"]
    assert model.input_shape == (None, 3, 4)
    from deploykit.backend import keras

    standardize = keras.Model(model.inputs, model.get_layer("standardize").output)
    z = np.asarray(standardize(data.x_train, training=False))
    assert np.allclose(z[:, 1:].mean(axis=0), 0, atol=1e-4)
    assert np.allclose(z[:, 1:].std(axis=0), 1, atol=1e-3)
    assert np.all(z[:, 0] == 0)
    probe = np.array(data.x_test[:1])
    probe[0, 0, 0] = 4.0
    assert np.asarray(standardize(probe, training=False))[0, 0] == pytest.approx(1.0)
