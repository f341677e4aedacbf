"""With ``tune_holdout``, fine-tunes stop early on a holdout of the training rows (deploykit.sparsity.holdout), never
on the validation rows the run decides on: poisoned validation rows change nothing a fine-tune chooses; the holdout is
seeded and stratified; a training split too small for one falls back to the validation rows and says so."""

import dataclasses
import math

import numpy as np
import pytest

from deploykit.errors import ConfigError
from deploykit.sparsity.holdout import (
    DEFAULT_TUNE_HOLDOUT,
    HOLDOUT_MAX_ROWS,
    HOLDOUT_MIN_ROWS,
    fewest_rows,
    fit_rows,
    holdout_rows,
    split_holdout,
    stopping_text,
)


def test_the_holdout_is_seeded_stratified_and_disjoint():
    y = np.repeat(np.arange(4), [100, 60, 30, 10])
    one, again, other = (split_holdout(y, 0.15, seed, stratify=True) for seed in (42, 42, 7))
    assert np.array_equal(one.held, again.held) and np.array_equal(one.fit, again.fit)  # the run's seed decides
    assert not np.array_equal(one.held, other.held)
    assert len(one.held) == holdout_rows(len(y), 0.15) == 30 and len(one.fit) == fit_rows(len(y), 0.15) == 170
    assert np.array_equal(np.sort(np.concatenate([one.fit, one.held])), np.arange(len(y)))
    for label, count in enumerate((100, 60, 30, 10)):  # each class held out in its share, to within one row
        assert abs(np.sum(y[one.held] == label) - 0.15 * count) <= 1
    plain = split_holdout(np.linspace(0, 1, 400), 0.1, 0, stratify=False)  # a regressor's targets: a seeded draw
    assert len(plain.held) == 40 and len(np.intersect1d(plain.held, plain.fit)) == 0


def test_tiny_and_huge_training_splits():
    assert split_holdout(np.zeros(fewest_rows(0.15) - 1, int), 0.15, 0, stratify=True) is None  # too few: no holdout
    assert len(split_holdout(np.zeros(fewest_rows(0.15), int), 0.15, 0, stratify=True).held) == HOLDOUT_MIN_ROWS
    assert holdout_rows(200_000, 0.15) == HOLDOUT_MAX_ROWS and fit_rows(200_000, 0.15) == 190_000
    assert holdout_rows(10_000, 0.0) == 0 and split_holdout(np.zeros(1000), 0.0, 0, stratify=False) is None
    assert "validation rows" in stopping_text(0.0) and f"fewer than {fewest_rows(0.15)}" in stopping_text(0.15)


def test_tune_holdout_is_one_option_of_every_fine_tune():
    from deploykit.pipeline.config import OptimizeConfig
    from deploykit.sparsity.config import PruneConfig, StructuredConfig

    config = OptimizeConfig().with_options(tune_holdout=0.1)
    assert config.sparsity.prune.tune_holdout == config.sparsity.l1.tune_holdout == 0.1
    text = OptimizeConfig.from_toml_text("[sparsity.prune]\ntune_holdout = 0.2\n")
    assert text.sparsity.prune.tune_holdout == 0.2
    assert StructuredConfig().tune_holdout == PruneConfig().tune_holdout == DEFAULT_TUNE_HOLDOUT
    for bad in (0.6, -0.1, "some", True):
        with pytest.raises(ConfigError, match="tune_holdout"):
            PruneConfig(tune_holdout=bad)
        with pytest.raises(ConfigError, match="tune_holdout"):  # the option's path: the config's one range
            OptimizeConfig().with_options(tune_holdout=bad)


def _rows(digits, n: int):
    """``digits`` with ``n`` training rows."""
    return dataclasses.replace(digits, x_train=digits.x_train[:n], y_train=digits.y_train[:n])


def _poisoned(data):
    """The validation rows with their labels shifted by one class and their inputs reversed."""
    return dataclasses.replace(data, x_val=data.x_val[::-1].copy(), y_val=(data.y_val + 1) % 10)


def _tuned(model, data, config, teacher=None, said=None):
    """A copy of ``model`` fine-tuned: (its TuneResult, its weights, the val_loss of each epoch)."""
    from deploykit.backend import keras
    from deploykit.sparsity.tuning import fine_tune, rebuild

    losses = []
    log = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: losses.append(logs["val_loss"]))
    copy = rebuild(model)
    result = fine_tune(copy, data, config, callbacks=(log,), teacher=teacher, progress=said)
    return result, copy.get_weights(), losses


@pytest.mark.slow
def test_poisoned_validation_rows_change_nothing_a_fine_tune_chooses(digits):
    from deploykit.sparsity.config import PruneConfig
    from deploykit.sparsity.tuning import Teacher, teacher_of
    from tests.helpers import build_head

    data, model = _rows(digits, 400), build_head()
    config = PruneConfig(epochs=3, patience=1, distill=True, learning_rate=1e-2, tune_holdout=0.15)
    teacher = teacher_of(model, data)
    clean = _tuned(model, data, config, teacher)
    poison = _poisoned(data)
    bad_teacher = Teacher(teacher.train, np.roll(teacher.val, 1, axis=1))  # the teacher's validation outputs too
    dirty = _tuned(model, poison, config, bad_teacher)
    assert clean[0].held_rows == holdout_rows(400, config.tune_holdout) > 0
    assert clean[0].best_epoch == dirty[0].best_epoch and clean[2] == pytest.approx(dirty[2], rel=1e-5)
    for a, b in zip(clean[1], dirty[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the default (tune_holdout 0) stops on the validation rows: the same poison shows in its losses
    old = dataclasses.replace(config, tune_holdout=0.0)
    assert _tuned(model, data, old, teacher)[2] != pytest.approx(_tuned(model, poison, old, bad_teacher)[2], rel=1e-3)


@pytest.mark.slow
def test_a_training_split_too_small_for_a_holdout_stops_on_the_validation_rows(digits):
    from deploykit.sparsity.config import PruneConfig
    from tests.helpers import build_head

    rows = fewest_rows(0.15) - 1
    data, model, said = _rows(digits, rows), build_head(), []
    config = PruneConfig(epochs=2, patience=1, tune_holdout=0.15)
    small = _tuned(model, data, config, said=said.append)
    assert small[0].held_rows == 0 and f"{rows} training rows are too few" in said[0]
    assert small[2] != pytest.approx(_tuned(model, _poisoned(data), config)[2], rel=1e-3)  # it saw validation


@pytest.mark.slow
def test_a_pruning_schedule_counts_the_rows_trained_on(digits, tmp_path):
    import keras

    from deploykit.io.models import load_model
    from deploykit.sparsity import prune
    from deploykit.sparsity.config import PruneConfig

    keras.utils.set_random_seed(0)
    users = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    users.save(tmp_path / "m.keras")
    data = _rows(digits, 600)
    config = PruneConfig(tune_holdout=0.15)
    _, report = prune(load_model(str(tmp_path / "m.keras")), data, 0.5, config=config, epochs=2, batch_size=32)
    trained = fit_rows(600, 0.15)
    assert report.held_rows == 600 - trained == 90
    assert report.schedule.steps_per_epoch == math.ceil(trained / 32)  # the target is reached within the run
