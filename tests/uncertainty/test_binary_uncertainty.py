"""A deep ensemble of binary (one sigmoid unit) members: temperature per member, the abstain threshold and the
comparison, as for any two-class classifier."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains two small models


def _binary_data():
    from deploykit.io.inputs import as_dataset

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.7 * rng.normal(size=400) > 0).astype(np.int64)
    return as_dataset((x, y))


def _member(data, seed: int, path):
    from deploykit.backend import keras, set_seed
    from deploykit.export import export_onnx
    from deploykit.export.metadata import ModelMetadata

    set_seed(seed)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit(data.x_train, data.y_train, epochs=15, batch_size=32, verbose=0)
    return export_onnx(model, path, metadata=ModelMetadata(class_names=list(data.class_names))).path


def test_an_ensemble_of_sigmoid_members_is_calibrated_thresholded_and_compared(tmp_path):
    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.bundle import ensemble_bundle
    from deploykit.uncertainty.selective import SelectiveTarget

    data = _binary_data()
    members = [_member(data, seed, tmp_path / f"m{seed}.onnx") for seed in (1, 2)]
    bundle = ensemble_bundle(
        members, data, tmp_path / "ensemble.onnx", target=SelectiveTarget(target_accuracy=None, target_coverage=0.8)
    )
    comparison = bundle.comparison
    assert comparison.mc.accuracy > 0.75 and comparison.temperature is not None
    assert comparison.selective.test.coverage > 0.5
    result = UncertaintyPredictor(tmp_path / "ensemble.onnx").predict(data.x_test)
    assert result.mean.shape == (len(data.x_test), 2) and np.allclose(result.mean.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(result.predicted_class, bundle.predicted_class)
