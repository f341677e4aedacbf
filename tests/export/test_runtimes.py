"""The runtime timing the objective compares files with (deploykit.export.runtimes.interleaved_fastest)."""

from __future__ import annotations

import time

from deploykit.export.runtimes import interleaved_fastest


def _sleeper(seconds: float, spikes: dict[int, float] | None = None):
    """A call that sleeps ``seconds`` (``spikes[i]`` on its i-th call), counting its calls."""
    calls = []

    def call():
        calls.append(1)
        time.sleep((spikes or {}).get(len(calls), seconds))

    return call, calls


def test_the_fastest_call_is_kept_and_a_spike_is_not():
    steady, _ = _sleeper(0.002, spikes={3: 0.08, 4: 0.08, 5: 0.08})
    best = interleaved_fastest({"steady": steady}, repeats=6, warmup=1)["steady"]
    assert 0.002 <= best < 0.04


def test_short_calls_are_repeated_until_each_had_its_seconds_and_every_function_as_often():
    fast, fast_calls = _sleeper(0.001)
    slow, slow_calls = _sleeper(0.004)
    best = interleaved_fastest({"fast": fast, "slow": slow}, repeats=3, seconds=0.1, warmup=1)
    # rounds = seconds / the slowest warm call: about 25, never more than 100
    assert 10 <= len(slow_calls) - 1 <= 100
    assert len(fast_calls) == len(slow_calls)
    assert best["fast"] < best["slow"]


def test_the_cap_bounds_the_rounds_and_repeats_are_a_floor():
    fast, calls = _sleeper(0.0)
    interleaved_fastest({"f": fast}, repeats=5, seconds=10.0, cap=40, warmup=2)
    assert len(calls) == 2 + 40
    fast, calls = _sleeper(0.0)
    interleaved_fastest({"f": fast}, repeats=5, warmup=2)
    assert len(calls) == 2 + 5
