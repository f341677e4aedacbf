"""sparsify_l1: l1 fine-tuning then exact zeros below the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import ConfigError

pytestmark = pytest.mark.slow  # every test reads the trained_model fixture (trains a model)


def test_sparsify_l1_zeros_small_weights(trained_model, digits):
    from deploykit.sparsity import sparsify_l1

    before = [w.copy() for w in trained_model.get_weights()]
    lines: list[str] = []
    model, report = sparsify_l1(
        trained_model, digits, l1=1e-3, threshold=0.05, epochs=2, compact=True, progress=lines.append
    )
    assert all(np.array_equal(a, b) for a, b in zip(before, trained_model.get_weights()))
    dense = [l for l in model.layers if type(l).__name__ == "Dense"]
    for layer in dense[:-1]:
        kernel = layer.get_weights()[0]
        assert np.all(np.abs(kernel[kernel != 0]) >= 0.05)
        assert np.mean(kernel == 0) > 0.05
        assert layer.get_config()["kernel_regularizer"] is None  # the penalty is not shipped
    assert np.count_nonzero(dense[-1].get_weights()[0] == 0) == 0  # the output layer is not zeroed
    assert [(l.name, l.changed) for l in report.layers] == [(l.name, l is not dense[-1]) for l in dense]
    assert report.method == "l1" and report.target_sparsity is None
    assert 0 < report.accuracy_after <= 1 and 0 < report.accuracy_before_zeroing <= 1
    assert report.accuracy_after == pytest.approx(
        float(np.mean(np.argmax(model(digits.x_test, training=False), -1) == digits.y_test))
    )
    assert report.compact is not None and report.compact.max_abs_diff <= 1e-5
    removed = {l.name: l.neurons_before - l.neurons_after for l in report.compact.layers}
    assert all(l.neurons_removed == removed[l.name] for l in report.layers)
    assert len(lines) == report.epochs_run and "|w| < 0.05" in lines[-1]


def test_l1_config_is_checked_before_any_work(trained_model, digits):
    from deploykit.sparsity import L1Config, sparsify_l1

    with pytest.raises(ConfigError, match="threshold must be a number > 0, got"):
        sparsify_l1(trained_model, digits, threshold=-1.0)
    with pytest.raises(ConfigError, match="l1 must be a number > 0, got"):
        L1Config(l1=0.0)
