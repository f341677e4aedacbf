"""The time budget: declared once ([search] time_budget, time_budget=, --time-budget), planned from measured costs,
obeyed by the search (a try stopped at its deadline, tries that cannot finish not started), said in one line."""

from __future__ import annotations

import time

import pytest

from deploykit.errors import ConfigError
from deploykit.export.config import ExportFormat, Quantization
from deploykit.pipeline import OptimizeConfig
from deploykit.pipeline.budget import (
    Costs,
    essential_variants,
    make_plan,
    priority,
    skipped_reason,
)
from deploykit.sparsity.deadline import CHEAP_LEVELS, SearchLimits


def _costs(epoch=1.0, export=2.0, evaluation=0.05, trace=0.5) -> Costs:
    return Costs(
        epoch=epoch,
        trace=trace,
        evaluation=evaluation,
        export=export,
        export_measured=False,
        test_rows=270,
        val_rows=270,
    )


def test_time_budget_is_one_option_in_toml_api_and_cli():
    config = OptimizeConfig.from_toml_text("[search]\ntime_budget = 10\n")
    assert config.search.time_budget == 10.0
    assert OptimizeConfig.from_toml_text(config.to_toml()) == config  # the run's deploykit.toml repeats it
    assert OptimizeConfig().with_options(time_budget=2.5).search.time_budget == 2.5
    assert OptimizeConfig().search.time_budget is None
    for bad in ("0", "-1", '"ten"'):
        with pytest.raises(ConfigError, match="search.time_budget"):
            OptimizeConfig.from_toml_text(f"[search]\ntime_budget = {bad}\n")
    with pytest.raises(ConfigError, match="unknown key"):
        OptimizeConfig.from_toml_text("[search]\nbudget = 10\n")


def test_cli_flag_sets_the_option():
    from deploykit.cli.main import build_parser
    from deploykit.cli.optimize import options_from_args

    args = build_parser().parse_args(["optimize", "--time-budget", "10"])
    assert options_from_args(args)["time_budget"] == 10.0
    args = build_parser().parse_args(["ensemble", "--out", "x", "--time-budget", "3"])
    assert args.time_budget == 3.0


def test_without_a_budget_the_defaults_stay_and_the_line_gives_minutes():
    config = OptimizeConfig()
    plan = make_plan(config, _costs(), time.monotonic(), n_layers=2)
    assert plan.targets == config.sparsity.search.targets and plan.epochs == config.sparsity.prune.epochs
    assert plan.variants == config.export.variants() and not plan.dropped
    line = plan.line()
    assert line.startswith("plan (no --time-budget): ~") and "up to 5 tries" in line and "\n" not in line
    # 5 tries x (0.5 + 30 x 1 s) alone are 2.5 min: the estimate says so
    assert sum(plan.estimates.values()) > 5 * 30


def test_a_generous_budget_changes_nothing_but_the_export_order():
    plan = make_plan(
        OptimizeConfig().with_options(time_budget=600), _costs(epoch=0.01, export=0.1), time.monotonic(), n_layers=2
    )
    assert plan.search and plan.targets == (0.95, 0.9, 0.8, 0.7, 0.5) and plan.epochs == 30 and not plan.dropped
    assert plan.variants[0] == (ExportFormat.ONNX, Quantization.FLOAT32)
    assert [q.value for _, q in plan.variants[1:3]] == ["int8-dynamic", "int8-full"]  # int8 next
    assert plan.limits.stop_at is not None and plan.limits.levels is None  # the full scan


def test_a_tight_budget_plans_fewer_cheaper_tries_and_keeps_the_wanted_artifacts():
    costs = _costs(epoch=10.0, export=20.0, evaluation=2.0, trace=5.0)
    plan = make_plan(OptimizeConfig().with_options(time_budget=6), costs, time.monotonic(), n_layers=40)
    assert plan.search
    assert len(plan.targets) < 5 and plan.epochs < 30 and plan.epochs >= 2
    assert plan.limits.levels == CHEAP_LEVELS or plan.limits.scan_share < 1  # a cheaper scan than 40 x 6 full passes
    kept = [f"{f.value} {q.value}" for f, q in plan.variants]
    assert kept[:2] == ["onnx float32", "onnx int8-dynamic"]
    assert plan.dropped  # something was left out, and the line says what
    line = plan.line()
    assert "left out: " in line and "plan for 6.0 min" in line
    # the planned work fits the budget less its safety margin
    assert sum(plan.estimates.values()) <= 6 * 60


def test_a_budget_too_small_for_one_try_skips_the_search_but_not_the_essential_exports():
    plan = make_plan(
        OptimizeConfig().with_options(time_budget=1), _costs(epoch=60.0, export=5.0), time.monotonic(), n_layers=2
    )
    assert not plan.search
    assert essential_variants(plan.variants) == plan.variants[:2]
    assert any("sparsity" in d for d in plan.dropped)


def test_steps_past_the_deadline_are_skipped_with_the_reason():
    config = OptimizeConfig().with_options(time_budget=1)
    plan = make_plan(config, _costs(), time.monotonic(), n_layers=2)
    plan.start -= 3600  # an hour later: past the deadline
    assert "time budget" in skipped_reason(plan, "export tflite float16", config)
    assert "deadline has passed" in skipped_reason(plan, "compact", config)  # only improves the model: skipped
    assert skipped_reason(plan, "save model", config) is None  # what there is is saved
    assert (
        skipped_reason(
            make_plan(OptimizeConfig(), _costs(), time.monotonic(), 2), "export onnx float32", OptimizeConfig()
        )
        is None
    )  # no budget: nothing is skipped


def test_priority_puts_onnx_float32_then_int8_first():
    variants = OptimizeConfig().export.variants()
    ordered = priority(variants)
    assert sorted(ordered, key=variants.index) == variants
    assert ordered[0] == (ExportFormat.ONNX, Quantization.FLOAT32)


def test_scan_layers_take_the_largest_until_the_share_is_covered():
    sizes = {"a": 10, "b": 1000, "c": 50, "d": 500}
    assert SearchLimits(scan_share=0.6).scan_layers(sizes) == ["b"]
    assert SearchLimits(scan_share=0.9).scan_layers(sizes) == ["b", "d"]  # model order kept
    assert SearchLimits().scan_layers(sizes) == list(sizes)


def test_a_try_is_started_only_if_it_can_finish():
    limits = SearchLimits(stop_at=time.monotonic() + 10, try_seconds=5)
    assert limits.next_try_fits([]) and not limits.next_try_fits([3.0, 20.0])
    assert SearchLimits().next_try_fits([1e9])  # no deadline
    assert SearchLimits().stopper() is None


def test_the_sensitivity_line_stays_short_for_a_convnet():
    from deploykit.core.evaluate import Budget, Metric
    from deploykit.sparsity.search import LayerSensitivity, sensitivity_line

    layers = [
        LayerSensitivity(f"block{k}_expand_conv", 1000 + k, [0.5, 0.8, 0.95], [0.0, 0.01 * (k % 7), 0.02 * k])
        for k in range(81)
    ]
    line = sensitivity_line(layers, Budget(Metric.ACCURACY, 0.01))
    assert len(line) < 240 and "block80_expand_conv" in line and "81 layers" in line


@pytest.mark.slow
def test_a_try_running_at_the_deadline_is_stopped_and_later_ones_not_started(trained_model, digits):
    from deploykit.sparsity import PruneConfig, SearchConfig, search_sparsity

    limits = SearchLimits(stop_at=time.monotonic() + 4.0, try_seconds=1.0)
    _, report = search_sparsity(
        trained_model,
        digits,
        0.5,
        config=SearchConfig(targets=(0.9, 0.5), sensitivity=False),
        prune_config=PruneConfig(epochs=200, distill=False),
        limits=limits,
    )
    first, second = report.tries
    assert first.note.startswith("stopped at the time budget's deadline")  # kept or failed, it says so
    assert second.note.startswith("not tried") or first.kept


@pytest.mark.slow
def test_optimize_under_a_time_budget_says_its_plan_and_reports_what_it_skipped(trained_model, digits, tmp_path):
    from deploykit.pipeline import optimize

    lines: list[str] = []
    result = optimize(
        trained_model, digits, out_dir=tmp_path / "out", time_budget=1.5, samples=5, progress=lines.append
    )
    plan_lines = [line for line in lines if line.startswith("plan for 1.5 min: ~")]
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step 1/"))
    assert len(plan_lines) == 1 and lines.index(plan_lines[0]) < first_step  # said before the run starts
    plan = result.report["plan"]
    assert plan["time_budget_s"] == 90 and plan["exports"][0] == "onnx float32"
    for record in result.steps:  # a step the budget skipped says why
        if record.status.value == "skipped" and record.step.startswith(("export", "mc")):
            assert "time budget" in record.reason
    for attempt in result.tries:
        assert attempt.kept or attempt.note  # a try that was stopped or not started says so
    assert len(plan_lines[0]) < 240  # one readable line


def test_when_the_wanted_exports_do_not_fit_fold_and_compact_make_room():
    config = OptimizeConfig().with_options(time_budget=5)
    costs = Costs(
        epoch=100.0,
        trace=50.0,
        evaluation=5.0,
        export=60.0,
        export_measured=False,
        test_rows=500,
        val_rows=500,
        model_step=70.0,
    )  # 3 model steps (210 s) + 2 exports (138 s) > 255 s left
    plan = make_plan(config, costs, time.monotonic(), n_layers=80)
    assert {"fold", "compact"} <= set(plan.dropped) and not plan.search
    assert "left out" in skipped_reason(plan, "fold", config)
    assert skipped_reason(plan, "save model", config) is None
    assert [f"{f.value} {q.value}" for f, q in plan.variants] == ["onnx float32", "onnx int8-dynamic"]


def test_a_convnet_s_int8_dynamic_is_planned_at_the_int8_static_cost_it_is_exported_at():
    """On a graph with convolutions the int8-dynamic variant is exported as int8-static first (QDQ convolutions):
    the plan counts that cost (EfficientNetB0's overran a 10-minute budget planned at the dynamic one's)."""
    from deploykit.pipeline.budget import EXPORT_WEIGHT

    config = OptimizeConfig().with_options(time_budget=60)
    dense, conv = (make_plan(config, _costs(), time.monotonic(), 2, convolutions=c) for c in (False, True))
    dynamic = Quantization.INT8_DYNAMIC
    assert dense.export_seconds(dynamic) == pytest.approx(2.0 * EXPORT_WEIGHT["int8-dynamic"])
    assert conv.export_seconds(dynamic) == pytest.approx(2.0 * EXPORT_WEIGHT["int8-static"])
    assert conv.export_seconds(dynamic) > dense.export_seconds(dynamic)
    conv.observe_export(Quantization.FLOAT32, 10.0)
    conv.observe_export(dynamic, 50.0)  # measured: the next int8-dynamic export of this graph is planned at it
    assert conv.export_seconds(dynamic) == 50.0
    assert conv.export_seconds(Quantization.INT8_FULL) == 50.0  # the same kind: calibrated int8


def test_the_scan_is_priced_at_the_traced_evaluation_it_runs_with():
    """The scan scores through one traced function (core.compiled.CompiledOutputs); measured, its cost prices the scan
    (layers x levels + 1 scores, one tracing), and a scan the eager price left out of a budget is planned whole."""
    from deploykit.pipeline.budget import SCAN_SHARE, _scan_seconds

    eager = _costs(epoch=10.0, export=1.0, evaluation=2.0, trace=5.0)
    traced = Costs(**{**eager.__dict__, "scan_evaluation": 0.5, "scan_trace": 3.0})
    assert _scan_seconds(eager, 10, 6, 270) == pytest.approx(2.0 * 61 + 5.0)  # unmeasured: the eager price, as before
    assert _scan_seconds(traced, 10, 6, 270) == pytest.approx(0.5 * 61 + 3.0)
    assert _scan_seconds(traced, 10, 3, 135) == pytest.approx(0.5 * 0.5 * 31 + 3.0)  # a sample of the rows
    config = OptimizeConfig().with_options(time_budget=8)  # a full scan of 11 layers: 2 s x 67 eager, 0.5 s x 67 traced
    plans = [make_plan(config, c, time.monotonic(), n_layers=11) for c in (eager, traced)]
    assert all(p.search for p in plans)
    assert plans[0].limits.levels is not None or plans[0].limits.scan_share < 1  # eager: a cheaper scan
    assert plans[1].limits.levels is None and plans[1].limits.scan_share == 1.0  # traced: the full scan fits
    assert _scan_seconds(traced, 11, 6, 270) <= SCAN_SHARE * 8 * 60 < _scan_seconds(eager, 11, 6, 270)
