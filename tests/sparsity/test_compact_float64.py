"""compact's check: a float32 difference beyond the bound is judged by the models' float64 twins."""

import numpy as np
import pytest

from deploykit.backend import keras
from deploykit.errors import StepError
from deploykit.sparsity.dead_neurons import _confirm_in_float64, compact


def _with_dead_units():
    keras.utils.set_random_seed(0)
    inp = keras.Input((20,))
    h = keras.layers.Dense(64, activation="relu")(inp)
    h = keras.layers.BatchNormalization()(h)
    model = keras.Model(inp, keras.layers.Dense(5, activation="softmax")(h))
    w = model.get_weights()
    w[0][:, ::3], w[1][::3] = 0, 0  # a third of the units output relu(0) = 0 whatever the input: removable
    w[-2] *= 30  # sharp probabilities: float32 rounding shows in them
    model.set_weights(w)
    return model


def test_exact_removal_passes_when_float32_rounding_exceeds_the_bound():
    model = _with_dead_units()
    x = np.random.default_rng(0).normal(size=(256, 20)).astype(np.float32)
    compacted, report = compact(model, x, tolerance=1e-13)
    assert report.max_abs_diff > 1e-13  # the float32 check alone would have refused it
    assert report.layers[0].neurons_after == 64 - 22
    dense = [layer for layer in compacted.layers if isinstance(layer, keras.layers.Dense)]
    assert dense[0].get_weights()[0].shape == (20, 64 - 22)


def test_a_real_change_is_refused_with_both_figures():
    model = _with_dead_units()
    changed = keras.models.clone_model(model)
    w = model.get_weights()
    w[-1][0] += 0.5  # not a rewrite: a different model (one class's bias)
    changed.set_weights(w)
    x = np.random.default_rng(1).normal(size=(32, 20)).astype(np.float32)
    with pytest.raises(StepError, match=r"compact: outputs changed by .* and by .* in float64"):
        _confirm_in_float64(model, changed, x, 1e-5, 0.1)
