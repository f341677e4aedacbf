"""Fine-tuning by task: a regressor prunes under MSE (distilled towards its teacher's predictions), a logits classifier
distils from softmax(logits)."""

import numpy as np
import pytest

from deploykit.core.evaluate import Budget, Metric, softmax
from deploykit.sparsity import prune, search_sparsity
from deploykit.sparsity.config import PruneConfig, SearchConfig
from deploykit.sparsity.tuning import _targets, teacher_of
from tests.helpers import build_head


@pytest.fixture(scope="module")
def diabetes():
    from deploykit.data.dataset import load_dataset

    return load_dataset("diabetes")


def test_teachers_and_targets_by_task(diabetes, digits):
    logits = build_head(outputs=10)
    teacher = teacher_of(logits, digits)
    np.testing.assert_allclose(teacher.val, softmax(np.asarray(logits(digits.x_val))), atol=1e-5)
    regressor = build_head(input_dim=10, outputs=1)
    taught = teacher_of(regressor, diabetes)
    np.testing.assert_allclose(taught.val, np.asarray(regressor(diabetes.x_val)), atol=1e-4)  # predictions, no softmax
    config = PruneConfig(distill=True, alpha=0.25)
    loss, metric, y_train, y_val = _targets(diabetes, config, taught)
    assert loss is None and metric == "mse" and y_train.shape == (len(diabetes.x_train), 1)
    np.testing.assert_allclose(y_val[:, 0], 0.25 * taught.val[:, 0] + 0.75 * diabetes.y_val, rtol=1e-5)


@pytest.mark.slow
def test_a_regressor_is_pruned_and_searched_on_its_rmse(diabetes):
    from deploykit.backend import keras

    model = build_head(input_dim=10, hidden=(64, 32), outputs=1)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(diabetes.x_train, diabetes.y_train, epochs=30, batch_size=32, verbose=0)
    pruned, report = prune(model, diabetes, 0.5, epochs=4, distill=True)
    assert report.accuracy_after is None and report.rmse_before > 0 and report.rmse_after > 0
    assert report.after(Metric.RMSE) == report.rmse_after and "test RMSE" in report.summary()
    assert 0.45 < report.layers[1].sparsity < 0.55
    _, searched = search_sparsity(
        model,
        diabetes,
        Budget(Metric.RMSE, 10.0),
        config=SearchConfig(targets=(0.5,)),
        prune_config=PruneConfig(epochs=3, distill=False),
    )
    assert searched.budget.metric is Metric.RMSE and searched.kept is not None  # a 1000% budget keeps the try
    assert searched.kept.rmse is not None and searched.kept.accuracy is None


@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_a_one_unit_binary_head_is_searched_on_its_own_accuracy(digits, activation):
    """A sigmoid (or logit) head's one column: the search's accuracy is p > 0.5 (z > 0), not an argmax of one
    column (class 0 on every row: -47.78 pt with a 95% interval of +0.00 to +0.00 printed on keras.io's text
    classifier), and the figure it prints agrees with its interval."""
    import dataclasses

    from deploykit.backend import keras
    from deploykit.core.evaluate import score
    from deploykit.core.task import Task

    binary = dataclasses.replace(
        digits,
        y_train=(digits.y_train >= 5).astype(np.int64),
        y_val=(digits.y_val >= 5).astype(np.int64),
        y_test=(digits.y_test >= 5).astype(np.int64),
        class_names=("low", "high"),
    )
    model = build_head(hidden=(32,), outputs=1)
    if activation:
        model = keras.Sequential([*model.layers[:-1], keras.layers.Dense(1, activation=activation)])
        model.build((None, 64))
    model.compile(keras.optimizers.Adam(0.01), keras.losses.BinaryCrossentropy(from_logits=activation is None))
    model.fit(binary.x_train, binary.y_train, epochs=20, batch_size=64, verbose=0)
    original = score(model, binary.x_val, binary.y_val, Task.CLASSIFICATION)
    assert original > 0.85
    _, searched = search_sparsity(
        model,
        binary,
        Budget(Metric.ACCURACY, 0.5),
        config=SearchConfig(targets=(0.5,)),
        prune_config=PruneConfig(epochs=2, distill=False),
    )
    (attempt,) = searched.tries
    assert searched.original == pytest.approx(original)
    assert attempt.accuracy > 0.8  # an argmax of the one column scores the share of class 0 (about 0.5)
    assert attempt.accuracy - original == pytest.approx(attempt.accuracy_change, abs=1e-9)
    assert attempt.ci95[0] <= attempt.accuracy_change <= attempt.ci95[1]
