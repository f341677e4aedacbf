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
