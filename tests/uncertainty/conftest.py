"""Small untrained dense models for the MC Dropout tests (weights seeded, BN statistics randomized)."""

from __future__ import annotations

import pytest

from tests.helpers import build_dense


def _build(seed: int, **kwargs):
    from deploykit.backend import set_seed

    set_seed(seed)
    return build_dense(**kwargs)


@pytest.fixture(scope="session")
def mc_bn_model(digits, random_bn_model):
    """Normalization -> [Dense(elu) -> BN -> Dropout(0.2)] x 2 -> Dense(10, softmax)."""
    return random_bn_model(1, data=digits)


@pytest.fixture(scope="session")
def mc_plain_model(digits):
    """No BN: Normalization -> [Dense(elu) -> Dropout(0.3)] x 2 -> Dense(10, softmax)."""
    return _build(2, data=digits, bn=False, dropout=0.3)


@pytest.fixture(scope="session")
def mc_selu_model(digits):
    """Normalization -> [Dense(selu) -> AlphaDropout(0.2)] x 2 -> Dense(10, softmax)."""
    return _build(3, data=digits, selu=True, dropout=0.2)


@pytest.fixture(scope="session")
def mc_model_path(tmp_path_factory, mc_bn_model):
    """The BN model exported as an MC ONNX model (T = 20, raw samples included)."""
    from deploykit.uncertainty import export_mc_onnx

    path = tmp_path_factory.mktemp("mc") / "model_mc.onnx"
    export_mc_onnx(mc_bn_model, path, samples=20, include_samples=True)
    return path


def _head_model(seed: int, outputs: int):
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    return keras.Sequential(
        [
            keras.Input(shape=(8,)),
            keras.layers.Dense(16, activation="elu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(outputs),
        ]
    )


@pytest.fixture(scope="session")
def logits_model():
    """Dense(elu) -> Dropout(0.3) -> Dense(3) with no activation: a logits classifier on 8 features."""
    return _head_model(4, 3)


@pytest.fixture(scope="session")
def regression_model():
    """Dense(elu) -> Dropout(0.3) -> Dense(2) linear: a two-target regressor on 8 features."""
    return _head_model(5, 2)


@pytest.fixture(scope="session")
def diabetes():
    """scikit-learn's diabetes data (442 rows, 10 features, one float target) as a regression Dataset, split
    70/15/15."""
    import numpy as np
    from sklearn.datasets import load_diabetes

    from deploykit.core.task import Task
    from deploykit.data.dataset import Dataset

    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = y.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    a, b = int(0.7 * len(x)), int(0.85 * len(x))
    tr, va, te = order[:a], order[a:b], order[b:]
    return Dataset("diabetes", x[tr], y[tr], x[va], y[va], x[te], y[te], (), task=Task.REGRESSION)


@pytest.fixture(scope="session")
def diabetes_model(diabetes):
    """An untrained Dense(16, relu) -> Dropout(0.2) -> Dense(1) regressor whose bias starts at the mean target."""
    import numpy as np

    from deploykit.backend import keras, set_seed

    set_seed(6)
    model = keras.Sequential(
        [
            keras.Input(shape=(10,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )
    kernel, _ = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * 20, np.array([diabetes.y_train.mean()], np.float32)])
    return model
