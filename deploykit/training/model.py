"""Build the dense classifier a :class:`TrainConfig` describes, as a tf_keras Sequential.

Input -> [Flatten] -> Normalization (training-split statistics, so the model
takes raw inputs) -> hidden blocks -> Dense(C, softmax).

A hidden block of the ``default`` preset is ``Dense(he_normal, elu)``, or with
BatchNormalization the chapter's "BN before the activation" form
``Dense(he_normal, no bias) -> BatchNormalization -> Activation(elu)``; of the
``selu`` preset ``Dense(lecun_normal, selu)``. Dropout (AlphaDropout for selu)
follows the blocks :meth:`TrainConfig.dropout_after` picks.
"""

from __future__ import annotations

import re

import numpy as np

from deploykit.data.dataset import Dataset
from deploykit.training.presets import TrainConfig

#: A feature whose training variance is at most this is constant: it is centred but not scaled
#: (as scikit-learn's StandardScaler does), so an unseen value cannot blow up to x / 1e-7.
CONSTANT_VARIANCE = 1e-12


def standardization(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance of the training split, constant features given variance 1."""
    var = np.where(data.feature_var <= CONSTANT_VARIANCE, 1.0, data.feature_var)
    return data.feature_mean.astype(np.float32), var.astype(np.float32)


def build_model(config: TrainConfig, data: Dataset):
    """A fresh, uncompiled tf_keras Sequential for ``data``'s inputs and classes."""
    from deploykit.backend import keras
    from deploykit.core.task import Task
    from deploykit.errors import UsageError

    if data.task is Task.REGRESSION:  # the presets build softmax classifiers: a regressor is trained in Keras
        raise UsageError(
            f"data {data.name!r} holds regression targets; deploykit trains classifiers (train the regressor "
            "in Keras, then run deploykit optimize / export on it)"
        )

    spec = config.spec
    regularizer = keras.regularizers.l2(config.l2) if config.l2 > 0 else None
    layers = [keras.Input(shape=data.input_shape, name="input")]
    if len(data.input_shape) > 1:
        layers.append(keras.layers.Flatten(name="flatten"))
    mean, var = standardization(data)
    layers.append(keras.layers.Normalization(mean=mean, variance=var, name="standardize"))
    for i, width in enumerate(config.hidden, start=1):
        dense = dict(kernel_initializer=spec.kernel_initializer, kernel_regularizer=regularizer, name=f"dense_{i}")
        if config.use_batchnorm:
            layers += [
                keras.layers.Dense(width, use_bias=False, **dense),  # BN's beta is the bias
                keras.layers.BatchNormalization(name=f"batchnorm_{i}"),
                keras.layers.Activation(spec.activation, name=f"{spec.activation}_{i}"),
            ]
        else:
            layers.append(keras.layers.Dense(width, activation=spec.activation, **dense))
        if config.dropout_after(i - 1):
            dropout_class = getattr(keras.layers, spec.dropout_class)
            layers.append(dropout_class(config.dropout, name=f"dropout_{i}"))
    layers.append(
        keras.layers.Dense(data.num_classes, activation="softmax", kernel_regularizer=regularizer, name="output")
    )
    stem = re.sub(r"[^A-Za-z0-9_]", "_", data.name.split(".")[0]) or "data"
    return keras.Sequential(layers, name=f"{stem}_{config.preset.value}")
