"""Model builders shared by the tests (import: ``from tests.helpers import build_dense``)."""

from __future__ import annotations

import numpy as np


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNormalization non-trivial statistics (not the 0/1 defaults)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, n).astype("float32"),   # gamma
                rng.normal(0, 0.5, n).astype("float32"),      # beta
                rng.normal(0, 1.0, n).astype("float32"),      # moving mean
                rng.uniform(0.2, 3.0, n).astype("float32"),   # moving variance
            ])


def build_dense(input_dim=64, hidden=(32, 32), classes=10, *, bn=True, dropout=0.2, selu=False, data=None):
    """A small chapter-style dense net in tf_keras (Normalization first when data is given)."""
    from deploykit.backend import keras

    layers = [keras.Input(shape=(input_dim,))]
    if data is not None:
        layers.append(keras.layers.Normalization(mean=data.feature_mean, variance=np.maximum(data.feature_var, 1e-6)))
    for width in hidden:
        if selu:
            layers.append(keras.layers.Dense(width, activation="selu", kernel_initializer="lecun_normal"))
            if dropout:
                layers.append(keras.layers.AlphaDropout(dropout))
        else:
            layers.append(keras.layers.Dense(width, activation="elu", kernel_initializer="he_normal"))
            if bn:
                layers.append(keras.layers.BatchNormalization())
            if dropout:
                layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(classes, activation="softmax"))
    return keras.Sequential(layers)
