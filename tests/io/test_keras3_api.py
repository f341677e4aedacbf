"""Keras 3 in, Keras 3 out through the Python API: a Keras 3 model object gives Keras 3 objects back."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # Keras 3 imports and rebuilds: seconds each


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    return keras


def _bn_model(k3):
    k3.utils.set_random_seed(0)
    model = k3.Sequential(
        [
            k3.Input((10,)),
            k3.layers.Dense(16),
            k3.layers.BatchNormalization(),
            k3.layers.Activation("relu"),
            k3.layers.Dropout(0.2),
            k3.layers.Dense(3, activation="softmax"),
        ]
    )
    bn = model.layers[1]
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 16), rng.normal(0, 1, 16), rng.normal(0, 1, 16), rng.uniform(0.5, 2, 16)])
    return model


def test_fold_batchnorm_of_a_keras3_model_is_keras3(k3, tmp_path):
    from deploykit import fold_batchnorm

    model = _bn_model(k3)
    folded, report = fold_batchnorm(model)
    assert isinstance(folded, k3.Model) and report.changed
    assert "BatchNormalization" not in [type(l).__name__ for l in folded.layers]
    x = np.random.default_rng(1).standard_normal((32, 10)).astype(np.float32)
    expected = k3.ops.convert_to_numpy(model(x, training=False))
    assert np.abs(k3.ops.convert_to_numpy(folded(x, training=False)) - expected).max() <= 1e-5
    k3.saving.save_model(folded, tmp_path / "folded.keras")  # what a Keras 3 user does with it
    again = k3.saving.load_model(tmp_path / "folded.keras")
    assert np.abs(k3.ops.convert_to_numpy(again(x, training=False)) - expected).max() <= 1e-5


def test_compact_and_tf_keras_callers_are_unchanged(k3, digits):
    from deploykit import compact, fold_batchnorm
    from deploykit.backend import is_tf_keras_model
    from tests.helpers import build_dense

    result, _ = compact(_bn_model(k3), None)
    assert isinstance(result, k3.Model)
    tf_model = build_dense(data=digits)
    assert is_tf_keras_model(fold_batchnorm(tf_model)[0])
