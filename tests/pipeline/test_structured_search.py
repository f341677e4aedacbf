"""optimize --structured auto: the share of units removed searched by bisection, decided on validation."""

from __future__ import annotations

import pytest

from deploykit.errors import ConfigError
from deploykit.pipeline import OptimizeConfig
from deploykit.pipeline.structured_step import bisect
from deploykit.pipeline.structured_table import STRUCTURED_LEVELS, StructuredStep
from deploykit.pipeline.tables import Objective
from tests.helpers import structured_search_run


@pytest.mark.parametrize("limit", [None, *STRUCTURED_LEVELS, 0.1])
def test_bisection_keeps_the_highest_share_within_and_never_tries_above_a_miss(limit):
    """``limit``: the highest share a (monotone) model tolerates; None: every share misses."""
    tried, kept = bisect(list(STRUCTURED_LEVELS), lambda share: limit is not None and share <= limit + 1e-9)
    expected = max((s for s in STRUCTURED_LEVELS if limit is not None and s <= limit + 1e-9), default=None)
    assert kept == expected
    assert len(tried) <= 3  # 7 levels: at most 3 fine-tuned tries
    assert tried[0] == 0.5  # the middle level first
    within = {share: limit is not None and share <= limit + 1e-9 for share in tried}
    _each_next_try_goes_the_right_way(tried, within)


def _each_next_try_goes_the_right_way(tried: list[float], within: dict[float, bool]) -> None:
    """After a miss only lower shares are tried, after a share within only higher ones."""
    for i, share in enumerate(tried):
        for later in tried[i + 1 :]:
            assert later > share if within[share] else later < share, (tried, within)


def test_a_try_the_time_budget_cannot_fit_stops_the_search():
    calls = []

    def attempt(share):
        calls.append(share)
        return True if len(calls) == 1 else None

    assert bisect([0.8, 0.6, 0.4], attempt) == ([0.6], 0.6)


def test_auto_by_option_and_by_the_latency_objective_and_0_switches_it_off():
    assert StructuredStep(fraction="auto").searching(Objective.BALANCED)
    assert StructuredStep().searching(Objective.LATENCY) and not StructuredStep().enabled(Objective.BALANCED)
    assert not StructuredStep(fraction=0.0).enabled(Objective.LATENCY)  # an explicit 0 is off
    fixed = StructuredStep(fraction=0.25)
    assert fixed.enabled(Objective.LATENCY) and not fixed.searching(Objective.LATENCY) and fixed.fixed == 0.25
    config = OptimizeConfig().with_options(structured="auto", objective="latency")
    assert config.structured.fraction == "auto"
    assert OptimizeConfig.from_toml_text(config.to_toml()) == config
    assert OptimizeConfig().with_options(structured="0.4").structured.fraction == 0.4  # the CLI's text
    with pytest.raises(ConfigError, match="structured must be a share in \\[0, 1\\) or 'auto', got 'most'"):
        OptimizeConfig().with_options(structured="most")
    with pytest.raises(ConfigError, match="structured.levels"):
        StructuredStep(levels=(0.5, 1.0))


def test_the_cli_flag_takes_auto():
    from deploykit.cli.main import build_parser
    from deploykit.pipeline.registry import OPTIONS_BY_NAME

    args = build_parser().parse_args(["optimize", "--structured", "auto"])
    assert OPTIONS_BY_NAME["structured"].read(args) == "auto"


@pytest.mark.slow
def test_auto_keeps_the_highest_share_within_the_budget_in_the_exported_graph(digits, tmp_path):
    """A Keras 3 MLP saved as users save it; three levels, two fine-tuning epochs each."""
    import onnx

    from deploykit.pipeline import Status

    structured = StructuredStep(fraction="auto", levels=(0.75, 0.5, 0.25), allocate="cost")
    result, step, tries = structured_search_run(digits, tmp_path, (48, 24), 4, structured, epochs=2)
    assert [t.setting for t in tries][:1] == ["structured 50%"]  # the middle level first
    within = {float(t.setting.split()[1].rstrip("%")) / 100: not t.note for t in tries}
    search = step.detail
    assert search.tried == list(within)
    expected = max((s for s, ok in within.items() if ok), default=None)
    assert search.kept == expected and sum(t.kept for t in tries) == (expected is not None)
    _each_next_try_goes_the_right_way(list(within), within)
    limit = OptimizeConfig().validate.max_nll_increase  # each try is held to the run's NLL rule too (issue 23)
    assert all(t.nll_change is not None for t in tries)
    assert all(t.note.startswith(("accuracy:", "NLL:")) for t in tries if t.note)
    assert all(t.note and not t.kept for t in tries if t.nll_change > limit + 1e-12)  # beyond the limit: a miss
    assert all(t.nll_change <= limit + 1e-12 for t in tries if not t.note)
    widths = [layer.get_weights()[0].shape[-1] for layer in result.model.layers if type(layer).__name__ == "Dense"]
    if expected is None:
        assert step.status is Status.MISSED and widths == [48, 24, 10]
        return
    assert step.status is Status.DONE and f"kept {expected:.0%}" in step.reason
    assert search.report.allocate == "cost" and "spread by cost" in search.report.summary()
    # the cost allocation: the multiply-adds of the kept share of every layer's units, at most
    uniform = [48 - round(48 * expected), 24 - round(24 * expected)]
    assert _macs(widths) <= _macs([*uniform, 10]) < _macs([48, 24, 10]) and widths[-1] == 10
    shapes = {tuple(t.dims) for t in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.initializer}
    assert (64, widths[0]) in shapes  # the exported graph has the new width


def _macs(widths: list[int]) -> int:
    """Multiply-adds per example of the 64 -> widths MLP."""
    return sum(a * b for a, b in zip([64, *widths], widths))
