"""train(): a short run on digits, its atomic outputs, the restored best weights, raw-input model files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.errors import UsageError
from deploykit.training import TrainConfig, train
from deploykit.training.trainer import CURVE_FILE, HISTORY_FILE, MODEL_FILE, RECORD_FILE

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    lines = []
    config = TrainConfig(hidden=(32, 32), dropout=0.2, dropout_layers="all", learning_rate=1e-2, epochs=8, patience=3)
    return train(config, digits, out, progress=lines.append), out, lines


@pytest.mark.slow
def test_short_run_reaches_090_on_digits(run, digits):
    result, _, lines = run
    assert result.test_accuracy >= 0.9
    assert result.record.test_accuracy == result.test_accuracy
    assert sum(line.startswith("epoch ") for line in lines) == result.record.epochs_run  # one progress line per epoch
    probs = result.model.predict(digits.x_test, verbose=0)
    assert np.mean(probs.argmax(axis=1) == digits.y_test) == pytest.approx(result.test_accuracy)


@pytest.mark.slow
def test_best_weights_are_restored(run, digits):
    result, _, _ = run
    history = result.history
    best = result.record.best_epoch
    assert history["val_loss"][best - 1] == min(history["val_loss"])
    probs = result.model.predict(digits.x_val, verbose=0)
    val_loss = -np.mean(np.log(probs[np.arange(len(digits.y_val)), digits.y_val]))
    assert val_loss == pytest.approx(history["val_loss"][best - 1], rel=1e-4)


@pytest.mark.slow
def test_outputs_are_written(run):
    result, out, _ = run
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_FILE, HISTORY_FILE, CURVE_FILE, RECORD_FILE])
    history = json.loads((out / HISTORY_FILE).read_text())
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(v) == result.record.epochs_run for v in history.values())
    assert history["lr"][-1] < 1e-4  # 1cycle annealed far below the 1e-2 peak
    assert max(history["lr"]) <= 1e-2
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["config"]["hidden"] == [32, 32]
    assert record["learning_rate"] == 1e-2 and record["lr_finder"] is None
    assert record["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert (out / CURVE_FILE).read_bytes()[:8] == PNG
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.slow
def test_saved_model_takes_raw_inputs(run, digits):
    from deploykit.io.models import load_model

    result, out, _ = run
    loaded = load_model(out / MODEL_FILE)
    assert type(loaded.layers[0]).__name__ == "Normalization"
    assert loaded.optimizer is None  # shipped without optimizer state
    raw = digits.x_test  # pixel values 0..16, not standardized
    assert raw.max() > 10
    assert np.allclose(loaded.predict(raw, verbose=0), result.model.predict(raw, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_existing_output_is_refused_before_training(run, digits):
    _, out, _ = run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(UsageError, match="already exists"):
        train(TrainConfig(hidden=(4,), epochs=1, learning_rate=1e-2), digits, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
def test_interrupted_run_leaves_nothing(digits, tmp_path):
    out = tmp_path / "run"

    def interrupt(line):
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(hidden=(8,), epochs=5, learning_rate=1e-2), digits, out, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_top_level_api_reexports_the_training_functions(digits, tmp_path):
    """``deploykit.train`` is the trainer (it refuses a file as output folder), not a module."""
    import deploykit

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        deploykit.train(TrainConfig(hidden=(4,), epochs=1, learning_rate=1e-2), digits, blocker)
    assert deploykit.TrainConfig is TrainConfig and callable(deploykit.find_lr) and callable(deploykit.build_model)
