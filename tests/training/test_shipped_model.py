"""The shipped default model: loads with deploykit.io.models, takes raw inputs, >= 0.95 on the digits test split."""

from __future__ import annotations

import numpy as np

from deploykit.cli.common import DEFAULT_MODEL


def test_shipped_model_loads_and_reaches_095(digits):
    from deploykit.io.models import load_model

    assert DEFAULT_MODEL.name == "digits_default.keras" and DEFAULT_MODEL.parent.name == "models"
    model = load_model(DEFAULT_MODEL)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[0] == "Normalization"  # raw pixels in
    assert "BatchNormalization" in kinds and "Dropout" in kinds  # work for fold and MC Dropout
    assert model.input_shape == (None, *digits.input_shape)
    probs = np.asarray(model(digits.x_test, training=False))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == digits.y_test) >= 0.95
    assert DEFAULT_MODEL.stat().st_size < 500_000
