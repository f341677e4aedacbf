"""1cycle: the rate (and SGD momentum) at start, middle and end, and the callback driving a real optimizer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.errors import ConfigError
from deploykit.training.presets import Optimizer
from deploykit.training.schedules import HIGH_MOMENTUM, LOW_MOMENTUM, OneCycle, OneCycleCallback, make_optimizer


def test_rate_at_start_middle_and_end():
    s = OneCycle(total_steps=1000, max_rate=0.01)
    assert s.anneal_steps == 50  # the last 5% of the steps
    assert s.peak_step == 475  # mid-training of the cycle before the anneal
    assert s.rate_at(0) == pytest.approx(0.001)
    assert s.rate_at(s.peak_step) == pytest.approx(0.01)
    assert s.rate_at(2 * s.peak_step) == pytest.approx(0.001)
    assert s.rate_at(1000) == pytest.approx(1e-6)  # three orders of magnitude below the start rate
    rates = np.array([s.rate_at(i) for i in range(1001)])
    assert np.all(np.diff(rates[: s.peak_step + 1]) > 0)
    assert np.all(np.diff(rates[s.peak_step :]) < 0)
    assert rates.argmax() == s.peak_step
    # linear: the quarter point is half-way up
    assert s.rate_at(s.peak_step // 2) == pytest.approx((0.001 + 0.01) / 2, rel=0.01)


def test_momentum_cycles_inversely():
    s = OneCycle(total_steps=200, max_rate=0.1)
    assert s.momentum_at(0) == pytest.approx(HIGH_MOMENTUM) == pytest.approx(0.95)
    assert s.momentum_at(s.peak_step) == pytest.approx(LOW_MOMENTUM) == pytest.approx(0.85)
    assert s.momentum_at(2 * s.peak_step) == pytest.approx(0.95)
    assert s.momentum_at(200) == pytest.approx(0.95)


@settings(max_examples=40, deadline=None)
@given(total=st.integers(2, 5000), rate=st.floats(1e-5, 10), step=st.integers(-5, 6000))
def test_rate_stays_within_its_bounds(total, rate, step):
    s = OneCycle(total_steps=total, max_rate=rate)
    assert s.last_rate * (1 - 1e-9) <= s.rate_at(step) <= rate * (1 + 1e-9)
    assert LOW_MOMENTUM - 1e-9 <= s.momentum_at(step) <= HIGH_MOMENTUM + 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total_steps": 1, "max_rate": 0.1},
        {"total_steps": 10, "max_rate": 0.0},
        {"total_steps": 10, "max_rate": 0.1, "anneal_fraction": 1.0},
    ],
)
def test_bad_schedules_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="1cycle"):
        OneCycle(**kwargs)


def test_callback_sets_rate_and_momentum_of_sgd_every_iteration():
    from deploykit.backend import keras, set_seed

    set_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2, activation="softmax")])
    schedule = OneCycle(total_steps=16, max_rate=0.05)
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(
            (float(model.optimizer.learning_rate.numpy()), float(model.optimizer.momentum.numpy()))
        )
    )
    model.compile(make_optimizer(Optimizer.SGD, 0.05), "sparse_categorical_crossentropy")
    callback = OneCycleCallback(schedule, cycle_momentum=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback, probe])
    assert len(seen) == 16
    assert np.allclose(seen, [(schedule.rate_at(i), schedule.momentum_at(i)) for i in range(16)], rtol=1e-6)
    assert callback.rates == pytest.approx([schedule.rate_at(i) for i in range(16)])
    assert model.optimizer.nesterov
