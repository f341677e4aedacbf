"""The sensitivity scan scores its model through one traced function, not one eager call per try.

MobileNetV3Small (a Keras 3 file) spent 17 min in the scan: 46 layers x 6 levels = 277 eager calls through 239
layers (its hard-swish imported as op layers), ~0.5 s of Python dispatch each. The scan now traces the model once
and swaps weights in place; these tests count evaluations and tracings (never time), and check the traced path
gives the eager path's sensitivities.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from deploykit.core.evaluate import Budget, Metric
from tests.sparsity.test_prune_conv import CONVS, conv_net, image_digits

pytestmark = pytest.mark.slow  # each test scans real models


@pytest.fixture
def counted(monkeypatch):
    """Every CompiledOutputs the scan makes (its ``calls`` and ``traces``)."""
    from deploykit.core import compiled

    made = []

    class Counted(compiled.CompiledOutputs):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(compiled, "CompiledOutputs", Counted)
    return made


@pytest.mark.slow
def test_traced_scan_gives_the_eager_scans_sensitivities(digits, counted):
    from deploykit.backend import keras
    from deploykit.core.compiled import EagerOutputs
    from deploykit.sparsity.search import LEVELS, _sensitivity

    data, model = image_digits(digits), conv_net()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy())
    model.fit(data.x_train[:400], data.y_train[:400], epochs=2, batch_size=32, verbose=0)
    budget = Budget(Metric.ACCURACY, 0.01)
    scan = _sensitivity(model, data, list(CONVS), budget)
    eager = {s.name: s.drops for s in _sensitivity(model, data, list(CONVS), budget, evaluator=EagerOutputs)}
    assert {s.name: s.drops for s in scan} == eager
    assert any(d > 0 for drops in eager.values() for d in drops)  # the comparison has something to compare
    assert counted[0].calls == len(CONVS) * len(LEVELS) + 1 and counted[0].traces == 1


def _mobilenet_v3_like(k3):
    """Two MobileNetV3 bottlenecks as keras.applications writes them: hard-swish as ``x * relu6(x + 3) / 6`` (op
    layers in the saved file), depthwise conv, squeeze-excite with a hard-sigmoid gate, residual Add."""
    L = k3.layers

    def hard_swish(x):
        return L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])

    inputs = k3.Input((16, 16, 3))
    x = hard_swish(L.BatchNormalization()(L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)))
    for _ in range(2):
        h = hard_swish(L.Conv2D(32, 1, use_bias=False)(x))
        h = hard_swish(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(h)))
        gate = L.Conv2D(8, 1, activation="relu")(L.GlobalAveragePooling2D(keepdims=True)(h))
        gate = L.ReLU(6.0)(L.Conv2D(32, 1)(gate) + 3.0) * (1.0 / 6.0)
        h = L.Conv2D(16, 1, use_bias=False)(L.Multiply()([h, gate]))
        x = L.Add()([x, L.BatchNormalization()(h)])
    x = hard_swish(L.Conv2D(48, 1)(L.GlobalAveragePooling2D(keepdims=True)(x)))
    outputs = L.Dense(4, activation="softmax")(L.Flatten()(x))
    return k3.Model(inputs, outputs)


def _image_data(n=96, shape=(16, 16, 3), classes=4):
    from deploykit.data.dataset import Dataset

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3 * n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, 3 * n)
    names = tuple(str(i) for i in range(classes))
    return Dataset("images", x[:n], y[:n], x[n : 2 * n], y[n : 2 * n], x[2 * n :], y[2 * n :], names)


@pytest.mark.slow
def test_mobilenet_v3_like_keras3_scan_traces_the_model_once(tmp_path, counted, monkeypatch):
    """Every layer and level scored through one tracing: the model is called from Python once, not 1 + layers x
    levels times; a passed deadline stops the scan before its first layer."""
    import keras as k3

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)
    from deploykit.core.evaluate import Budget, Metric
    from deploykit.io.models import load_model
    from deploykit.sparsity.config import PruneConfig
    from deploykit.sparsity.deadline import CHEAP_LEVELS, SearchLimits
    from deploykit.sparsity.search import _prunable, _scan

    _mobilenet_v3_like(k3).save(tmp_path / "m.keras")
    model, data = load_model(tmp_path / "m.keras"), _image_data()
    assert any(type(layer).__name__ != "InputLayer" and "add" in layer.name for layer in model.layers)
    chosen, _ = _prunable(model, data, PruneConfig(), 0)  # every layer, however small
    assert len(chosen) >= 8
    python_calls = []
    functional = type(model)
    original_call = functional.__call__
    monkeypatch.setattr(
        functional, "__call__", lambda self, *a, **k: python_calls.append(1) or original_call(self, *a, **k)
    )
    budget, limits = Budget(Metric.ACCURACY, 0.01), SearchLimits(levels=CHEAP_LEVELS)
    scan = _scan(model, data, chosen, budget, limits, lambda _m: None)
    assert [s.name for s in scan] == chosen
    assert counted[-1].calls == len(chosen) * len(CHEAP_LEVELS) + 1
    assert counted[-1].traces == 1 and len(python_calls) == 1
    late = _scan(model, data, chosen, budget, SearchLimits(stop_at=time.monotonic() - 1), lambda _m: None)
    assert late == [] and counted[-1].calls == 1  # the base score only
