"""Shared fixtures: the embedded digits data and tiny tf_keras models built here.

Models are built in fixtures (never loaded from the network); the trained one
is session-scoped so the suite trains it once.
"""

from __future__ import annotations

import pytest

from tests.helpers import build_dense


@pytest.fixture(scope="session")
def digits():
    from deploykit.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_model(digits):
    """A BN + dropout dense net trained briefly on digits (about 0.95 test accuracy)."""
    from deploykit.backend import keras, set_seed

    set_seed(0)
    model = build_dense(data=digits)
    model.compile(optimizer=keras.optimizers.Nadam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=30, batch_size=32, verbose=0,
              validation_data=(digits.x_val, digits.y_val))
    return model
