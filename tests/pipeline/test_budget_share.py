"""The structured step is held to a share of the accuracy budget on validation; the later steps keep the rest.

Fixed numbers (no training): a validation split of 1,000 rows where the original is right on 900, and candidates
that lose a given number of those rows (and gain none).
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.evaluate import Budget, Metric
from deploykit.errors import ConfigError
from deploykit.pipeline import OptimizeConfig
from deploykit.pipeline.confirm import VALIDATION, split_figure
from deploykit.pipeline.search_rule import step_budget
from deploykit.pipeline.structured_table import STRUCTURED_BUDGET_SHARE, StructuredStep

ROWS, RIGHT = 1000, 900
ONE_POINT = Budget(Metric.ACCURACY, 0.01)


def _outputs(lost: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate probabilities, original probabilities, labels): the candidate wrong on ``lost`` more rows."""
    y = np.arange(ROWS) % 10
    original = np.eye(10)[np.where(np.arange(ROWS) < RIGHT, y, (y + 1) % 10)]
    candidate = original.copy()
    candidate[:lost] = np.eye(10)[(y[:lost] + 1) % 10]
    return candidate, original, y


def _within(lost: int, budget: Budget) -> bool:
    candidate, original, y = _outputs(lost)
    figure = split_figure(VALIDATION, candidate, original, y, budget)
    assert figure.change == pytest.approx(-lost / ROWS)
    return figure.within


def test_the_step_budget_is_the_share_of_the_run_budget_in_its_metric():
    half = step_budget(ONE_POINT, 0.5)
    assert half.metric is Metric.ACCURACY and half.limit == pytest.approx(0.005)
    rmse = step_budget(Budget(Metric.RMSE, 0.05), 0.4)
    assert rmse.metric is Metric.RMSE and rmse.limit == pytest.approx(0.02)
    assert step_budget(ONE_POINT, 1.0) == ONE_POINT  # a share of 1: the old rule, the whole budget


@pytest.mark.parametrize(
    ("lost", "whole", "half"),
    [
        (4, True, True),  # -0.4 pt: within half the budget
        (5, True, True),  # -0.5 pt: exactly half
        (7, True, False),  # -0.7 pt: the whole budget would take it; the structured step does not
        (9, True, False),  # -0.9 pt: book MLP's structured 80% (-0.92 pt) is refused by half the budget
        (12, False, False),  # -1.2 pt: beyond the budget
    ],
)
def test_a_structured_try_is_judged_against_its_share_and_the_later_steps_against_the_whole(lost, whole, half):
    assert _within(lost, ONE_POINT) is whole  # the magnitude search and int8: the whole budget vs the original
    assert _within(lost, step_budget(ONE_POINT, 0.5)) is half  # --structured-budget-share 0.5
    assert _within(lost, step_budget(ONE_POINT, STRUCTURED_BUDGET_SHARE)) is whole  # the default: the whole


def test_the_share_is_one_option_in_config_toml_and_cli():
    from deploykit.cli.main import build_parser
    from deploykit.pipeline.registry import OPTIONS_BY_NAME

    assert StructuredStep().budget_share == STRUCTURED_BUDGET_SHARE == 1.0
    config = OptimizeConfig().with_options(structured_budget_share=0.4, structured="auto")
    assert config.structured.budget_share == 0.4
    assert OptimizeConfig.from_toml_text(config.to_toml()) == config
    assert StructuredStep(budget_share=1).budget_share == 1.0  # the whole budget: allowed
    args = build_parser().parse_args(["optimize", "--structured-budget-share", "0.3"])
    assert OPTIONS_BY_NAME["structured_budget_share"].read(args) == 0.3


@pytest.mark.parametrize("bad", [0, -0.2, 1.5, "half", True])
def test_a_share_outside_0_1_is_one_clear_error(bad):
    with pytest.raises(ConfigError, match="structured.budget_share"):
        StructuredStep(budget_share=bad)
