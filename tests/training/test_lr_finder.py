"""The learning-rate finder on a toy problem whose good rate is measured by a grid of constant-rate runs."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.data.dataset import Dataset
from deploykit.errors import ConfigError
from deploykit.training import TrainConfig, find_lr

PNG = b"\x89PNG\r\n\x1a\n"


def _toy(n=800, d=8, seed=0) -> Dataset:
    """A noisy linear two-class problem with raw features on very different scales."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * rng.uniform(0.5, 20, d) + 5).astype(np.float32)
    y = ((x - 5) @ rng.normal(size=d) > 0).astype(np.int64)
    flip = rng.random(n) < 0.1
    y[flip] = 1 - y[flip]
    a, b = int(n * 0.7), int(n * 0.85)
    return Dataset("toy", x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], ("0", "1"))


def _best_constant_rate(config: TrainConfig, data: Dataset) -> float:
    """The known good rate: lowest training loss after the same short budget, over a half-decade grid."""
    from deploykit.backend import set_seed
    from deploykit.training.model import build_model
    from deploykit.training.schedules import make_optimizer

    losses = {}
    for rate in 10.0 ** np.arange(-3, 0.6, 0.5):
        set_seed(config.seed)
        model = build_model(config, data)
        model.compile(make_optimizer(config.optimizer, rate), "sparse_categorical_crossentropy")
        loss = model.fit(data.x_train, data.y_train, epochs=4, batch_size=config.batch_size, verbose=0).history["loss"][
            -1
        ]
        losses[rate] = loss if np.isfinite(loss) else np.inf
    return min(losses, key=losses.get)


@pytest.mark.slow
def test_picks_within_10x_of_the_known_good_rate(tmp_path):
    data = _toy()
    config = TrainConfig(hidden=(16,), dropout=0.0, optimizer="sgd", seed=1)
    plot = tmp_path / "lr.png"
    result = find_lr(config, data, steps=200, plot_path=plot)
    good = _best_constant_rate(config, data)
    assert good / 10 <= result.picked_rate <= good * 10, (result.picked_rate, good)
    # the documented rule, and the loss really did shoot up after its lowest point
    assert result.picked_rate == pytest.approx(result.min_loss_rate / 10)
    assert result.exploded and result.explode_rate > result.min_loss_rate
    assert result.steps_run < 200  # stopped at the explosion
    assert len(result.rates) == len(result.losses) == result.steps_run
    ratios = np.array(result.rates[1:]) / np.array(result.rates[:-1])
    assert np.allclose(ratios, (10.0 / 1e-5) ** (1 / 199))  # exponential growth
    assert plot.read_bytes()[:8] == PNG
    assert result.plot_path == plot
    assert "rates" not in result.to_dict()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_rate": 1.0, "max_rate": 0.1}, "min_rate"),
        ({"steps": 5}, "steps"),
        ({"plot_path": "plot.jpg"}, ".png"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, kwargs, match):
    if "plot_path" in kwargs:
        kwargs = {**kwargs, "plot_path": tmp_path / kwargs["plot_path"]}
    with pytest.raises(ConfigError, match=match):
        find_lr(TrainConfig(hidden=(4,)), _toy(n=100), **kwargs)
    assert list(tmp_path.iterdir()) == []
