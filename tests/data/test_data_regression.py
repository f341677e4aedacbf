"""Regression data: float targets load as a Dataset(task=REGRESSION), split at random with a seed; diabetes is
embedded."""

import numpy as np
import pytest

from deploykit.core.task import OutputKind, Task
from deploykit.data.dataset import SplitConfig, load_dataset
from deploykit.errors import ConfigError, DataError


def test_diabetes_is_an_embedded_regression_dataset():
    d = load_dataset("diabetes")
    assert d.task is Task.REGRESSION and d.class_names == () and d.num_outputs == 1
    assert d.input_shape == (10,) and len(d.x_train) + len(d.x_val) + len(d.x_test) == 442
    assert d.y_test.dtype == np.float32 and d.y_test.ndim == 1
    assert "1 regression target(s)" in d.summary()
    again = load_dataset("diabetes")
    assert np.array_equal(d.y_test, again.y_test)  # the seeded split repeats
    other = load_dataset("diabetes", split=SplitConfig(seed=7))
    assert not np.array_equal(d.y_test, other.y_test)
    with pytest.raises(DataError, match="'diabetes' is a regression dataset, not classification"):
        load_dataset("diabetes", task=Task.CLASSIFICATION)
    with pytest.raises(DataError, match="class names were given, but the task is regression"):
        load_dataset("diabetes", class_names="a,b")
    with pytest.raises(ConfigError, match="task"):
        load_dataset("diabetes", task="ranking")


def test_several_targets_in_an_npz_and_a_csv(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = np.stack([x.sum(1), x[:, 0] * 2.5], axis=1)
    np.savez(tmp_path / "m.npz", x=x, y=y)
    d = load_dataset(tmp_path / "m.npz")
    assert d.task is Task.REGRESSION and d.num_outputs == 2 and d.y_train.shape == (len(d.x_train), 2)
    lines = ["a,b,c,y1,y2"] + [",".join(f"{v:.6f}" for v in (*xi, *yi)) for xi, yi in zip(x, y)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    c = load_dataset(tmp_path / "m.csv", label_column="y1,y2")
    assert c.task is Task.REGRESSION and c.num_outputs == 2 and c.input_shape == (3,)
    np.testing.assert_allclose(np.sort(c.y_test[:, 0]), np.sort(d.y_test[:, 0]), atol=1e-5)  # same seed, same split
    with pytest.raises(DataError, match="a classifier takes one label per row"):
        load_dataset(tmp_path / "m.npz", task="classification")


def test_regression_targets_are_checked(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2))
    np.savez(tmp_path / "nan.npz", x=x, y=np.where(np.arange(50) == 3, np.nan, 0.5 + np.arange(50)))
    with pytest.raises(DataError, match="regression targets hold 1 NaN or inf values"):
        load_dataset(tmp_path / "nan.npz")
    np.savez(tmp_path / "s.npz", x=x, y=np.array(["a", "b"] * 25))
    with pytest.raises(DataError, match="regression targets must be numbers"):
        load_dataset(tmp_path / "s.npz", task="regression")
    np.savez(tmp_path / "i.npz", x=x, y=np.arange(50) % 2)  # class ids read as targets when the user says so
    d = load_dataset(tmp_path / "i.npz", task="regression")
    assert d.task is Task.REGRESSION and d.y_train.dtype == np.float32


def _dense(outputs: int, activation=None):
    from deploykit.backend import keras

    return keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dense(outputs, activation=activation),
        ]
    )


def test_check_model_resolves_the_task_once_and_names_a_mismatch():
    diabetes, digits = load_dataset("diabetes"), load_dataset("digits")
    assert diabetes.check_model(_dense(1)) == (Task.REGRESSION, OutputKind.VALUES)
    with pytest.raises(DataError, match="holds regression targets, but model .* ends in a softmax"):
        diabetes.check_model(_dense(2, "softmax"))
    with pytest.raises(DataError, match=r"has 1 regression target\(s\), but model .* outputs 3"):
        diabetes.check_model(_dense(3))
    from deploykit.backend import keras

    logits = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    assert digits.check_model(logits) == (Task.CLASSIFICATION, OutputKind.LOGITS)
    softmax = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    assert digits.check_model(softmax) == (Task.CLASSIFICATION, OutputKind.PROBABILITIES)


def test_task_is_parsed_at_the_cli_edge_and_round_trips_in_the_config():
    from deploykit.cli.main import build_parser
    from deploykit.pipeline.config import OptimizeConfig

    parser = build_parser()
    for argv in (
        ["optimize", "--task", "regression"],
        ["export", "m.keras", "--out", "o", "--task", "regression"],
        ["validate", "m.onnx", "--data", "diabetes", "--task", "regression"],
        ["train", "--out", "o", "--task", "regression"],
    ):
        assert parser.parse_args(argv).task is Task.REGRESSION
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--task", "ranking"])
    config = OptimizeConfig().with_input(task="regression")
    assert config.input.task is Task.REGRESSION
    assert OptimizeConfig.from_toml_text(config.to_toml()) == config
    assert 'task = "regression"' in config.to_toml()
    with pytest.raises(ConfigError, match="input.task"):
        OptimizeConfig().with_input(task="ranking")
