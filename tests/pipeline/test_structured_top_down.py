"""[structured] search = "top-down": the levels tried highest first, the first within the budget kept, bounded."""

from __future__ import annotations

import pytest

from deploykit.errors import ConfigError
from deploykit.pipeline import OptimizeConfig
from deploykit.pipeline.structured_step import (
    LONG_RECOVERY,
    TOP_DOWN_MISSES,
    StructuredSearch,
    _patience,
    stopped_note,
    top_down,
)
from deploykit.pipeline.structured_table import STRUCTURED_LEVELS, STRUCTURED_TOP_DOWN_LEVELS, StructuredStep
from deploykit.pipeline.tables import Objective
from tests.helpers import structured_search_run

LEVELS = list(STRUCTURED_TOP_DOWN_LEVELS)  # 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3


def _tolerates(limit: float | None):
    """A (monotone) model that keeps its accuracy up to ``limit`` of its units removed (None: never)."""
    return lambda share: limit is not None and share <= limit + 1e-9


@pytest.mark.parametrize(
    ("limit", "tried", "kept"),
    [
        (0.9, [0.85], 0.85),  # the top share within: one fine-tuning
        (0.85, [0.85], 0.85),
        (0.8, [0.85, 0.8], 0.8),
        (0.78, [0.85, 0.8, 0.75], 0.75),  # between levels: the next one down
        (0.7, [0.85, 0.8, 0.75, 0.7], 0.7),  # the fourth try may still be kept
        (0.6, [0.85, 0.8, 0.75, 0.7], None),  # four misses: 60% and lower are not tried
        (None, [0.85, 0.8, 0.75, 0.7], None),
    ],
)
def test_top_down_tries_highest_first_keeps_the_first_within_and_stops_after_the_misses(limit, tried, kept):
    calls = []

    def attempt(share):
        calls.append(share)
        return _tolerates(limit)(share)

    assert TOP_DOWN_MISSES == 4
    assert top_down(LEVELS, attempt) == (tried, kept)
    assert calls == tried  # nothing tried but what is reported, in that order


def test_the_stop_rule_is_the_misses_bound_and_says_what_was_not_tried():
    tried, kept = top_down(LEVELS, _tolerates(None))
    assert stopped_note(LEVELS, tried, kept, "top-down") == "stopped after 4 shares missed; 60% and lower not tried"
    assert stopped_note(LEVELS, [0.85, 0.8], 0.8, "top-down") == ""  # kept one: nothing to explain
    few = [0.8, 0.6, 0.4]
    tried, kept = top_down(few, _tolerates(None))
    assert tried == few and kept is None and stopped_note(few, tried, kept, "top-down") == ""  # every level tried
    assert top_down(LEVELS, _tolerates(0.5), misses=6) == (LEVELS[:6], 0.5)  # the bound is a parameter
    assert stopped_note(LEVELS, tried, None, "bisect") == ""


def test_a_try_the_time_budget_cannot_fit_stops_the_top_down_search():
    answers = iter([False, None, True])  # the second try does not fit: the third is never asked
    calls = []

    def attempt(share):
        calls.append(share)
        return next(answers)

    assert top_down(LEVELS, attempt) == ([0.85], None) and calls == [0.85, 0.8]


def test_the_top_shares_recover_with_twice_the_patience_only_top_down():
    assert LONG_RECOVERY == 0.75
    assert [_patience(3, s, "top-down") for s in (0.85, 0.8, 0.75, 0.7, 0.5)] == [6, 6, 6, 3, 3]
    assert _patience(3, 0.85, "bisect") == 3  # the bisection's tries unchanged


def test_every_objective_defaults_to_bisect_uniform_and_what_is_set_wins():
    step = StructuredStep()
    assert step.search is None and step.allocate is None and step.levels is None  # unset: by the objective
    assert StructuredStep(search="top-down").shares(Objective.LATENCY) == STRUCTURED_TOP_DOWN_LEVELS
    for objective in (Objective.LATENCY, Objective.BALANCED, Objective.SIZE):
        assert step.how(objective) == ("bisect", "uniform") and step.shares(objective) == STRUCTURED_LEVELS
    # what is set wins under every objective
    assert StructuredStep(search="bisect", allocate="uniform").how(Objective.LATENCY) == ("bisect", "uniform")
    assert StructuredStep(search="bisect").shares(Objective.LATENCY) == STRUCTURED_LEVELS
    assert StructuredStep(search="top-down").how(Objective.BALANCED) == ("top-down", "uniform")
    assert StructuredStep(levels=[0.5, 0.9]).shares(Objective.LATENCY) == (0.9, 0.5)  # given levels win, sorted


def test_the_options_validate_and_round_trip():
    config = OptimizeConfig().with_options(structured_search="top-down", structured_allocate="cost")
    assert config.structured.how(Objective.BALANCED) == ("top-down", "cost")
    assert OptimizeConfig.from_toml_text(config.to_toml()) == config
    assert OptimizeConfig.from_toml_text(OptimizeConfig().to_toml()).structured == StructuredStep()  # unset stays
    with pytest.raises(ConfigError, match="structured.search must be one of bisect, top-down, got 'sideways'"):
        StructuredStep(search="sideways")
    with pytest.raises(ConfigError, match="structured.allocate must be one of"):
        StructuredStep(allocate="evenly")
    with pytest.raises(ConfigError):
        OptimizeConfig().with_options(structured_search="sideways")
    assert StructuredSearch([0.8], [0.8], 0.8, search="top-down").to_dict()["search"] == "top-down"


def test_the_cli_flag():
    from deploykit.cli.main import build_parser
    from deploykit.pipeline.registry import OPTIONS_BY_NAME

    args = build_parser().parse_args(["optimize", "--structured-search", "top-down"])
    assert OPTIONS_BY_NAME["structured_search"].read(args) == "top-down"


@pytest.mark.slow
def test_optimize_top_down_tries_from_the_top_and_records_its_search(digits, tmp_path):
    """A Keras 3 MLP saved as users save it, two levels, one fine-tuning epoch each: the run's record."""
    from deploykit.pipeline import Status

    structured = StructuredStep(fraction="auto", levels=(0.5, 0.75), search="top-down", allocate="cost")
    result, step, tries = structured_search_run(digits, tmp_path, (32, 16), 3, structured, epochs=1)
    settings = [t.setting for t in tries]
    assert settings[0] == "structured 75%"  # the highest level first
    search = step.detail
    assert search.search == "top-down" and search.tried == [0.75, 0.5][: len(tries)]
    assert all(t.note for t in tries[:-1])  # every try before the last missed (else the search had stopped)
    if tries[-1].note:
        assert search.kept is None and step.status is Status.MISSED and len(tries) == 2
    else:
        assert search.kept == search.tried[-1] and step.status is Status.DONE and tries[-1].kept
