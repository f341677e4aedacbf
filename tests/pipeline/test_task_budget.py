"""The budget of a regressor (max_rmse_increase) beside a classifier's (max_accuracy_drop): one name across CLI, API,
config and report."""

import numpy as np
import pytest

from deploykit.core.evaluate import Budget, Metric, RegressionErrors, output_scale, rmse, softmax
from deploykit.core.task import Task
from deploykit.errors import ConfigError
from deploykit.pipeline.config import OptimizeConfig
from deploykit.pipeline.records import ArtifactRow, Stage, Try, Verdict
from deploykit.pipeline.report import artifacts_text, try_cells


def test_the_budget_follows_the_task():
    config = OptimizeConfig()
    assert config.validate.budget(Task.CLASSIFICATION) == Budget(Metric.ACCURACY, 0.01)
    assert config.validate.budget(Task.REGRESSION) == Budget(Metric.RMSE, 0.05)
    changed = config.with_options(max_rmse_increase=0.1)
    assert changed.validate.max_rmse_increase == 0.1
    assert OptimizeConfig.from_toml_text(changed.to_toml()) == changed
    assert "budget RMSE +10%" in changed.summary(Task.REGRESSION) and "budget 1 pt" in changed.summary()
    with pytest.raises(ConfigError, match="validate.max_rmse_increase"):
        config.with_options(max_rmse_increase=-0.1)
    assert config.validate.tolerance_for("float32", Task.REGRESSION).max_rel_diff == 1e-4
    assert config.validate.tolerance_for("int8", Task.REGRESSION).max_rmse_increase is None  # the budget governs


def test_budget_arithmetic_in_each_metric():
    accuracy, error = Budget(Metric.ACCURACY, 0.01), Budget(Metric.RMSE, 0.05)
    assert accuracy.within(0.95, 0.94) and not accuracy.within(0.95, 0.939)
    assert error.within(50.0, 52.5) and not error.within(50.0, 52.6) and error.within(50.0, 40.0)
    assert error.shortfall(50.0, 55.0) == pytest.approx(0.1)
    assert error.describe() == "RMSE increase <= 5% of the original" and accuracy.describe() == "accuracy drop <= 1 pt"
    assert error.change(50.0, 55.0) == "+10.0% RMSE" and accuracy.change(0.95, 0.94) == "-1.00 pt"


def test_regression_errors_against_a_reference():
    ref = np.array([[100.0], [0.0], [-50.0]])
    pred = ref + np.array([[1.0], [0.5], [-2.0]])
    e = RegressionErrors.between(pred, ref)
    assert e.max_abs_error == 2.0 and e.rmse == pytest.approx(np.sqrt((1 + 0.25 + 4) / 3))
    scale = np.sqrt((100**2 + 50**2) / 3)  # values smaller than the RMS are relative to it
    assert e.max_rel_error == pytest.approx(max(1 / 100, 0.5 / scale, 2 / scale))
    assert rmse(pred[:, 0], ref) == pytest.approx(e.rmse)
    np.testing.assert_allclose(softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]], atol=1e-7)
    assert output_scale(np.array([0.2, 0.8])) == 1.0 and output_scale(np.array([150.0, 150.0])) == 150.0


def _row(file, rmse_value, change, verdict=Verdict.PASS):
    return ArtifactRow(
        file=file,
        format="onnx",
        runtime="onnxruntime",
        precision="float32",
        quantization="float32",
        sparsity=0.5,
        size_bytes=2048,
        gzip_bytes=1024,
        compression=2.0,
        accuracy=None,
        accuracy_change=None,
        agreement=None,
        max_abs_diff=1e-5,
        latency_b1_ms=0.01,
        throughput_b256=1e6,
        verdict=verdict,
        rmse=rmse_value,
        rmse_change=change,
        max_abs_error=140.9,
    )


def test_the_report_table_shows_rmse_for_a_regressor():
    text = artifacts_text([_row("original.keras", 54.42, 0.0, Verdict.REFERENCE), _row("model.onnx", 55.1, 0.0125)])
    header = text.splitlines()[0]
    assert "RMSE" in header and "Δ RMSE" in header and "max abs error" in header and "accuracy" not in header
    assert "+1.2%" in text and "55.1" in text and "140.9" in text
    cells = try_cells(Try(Stage.SPARSITY, "prune 80%", None, None, 1024, True, rmse=55.8, rmse_change=0.025))
    assert cells[2:4] == ["55.8", "+2.5%"]


def test_train_refuses_regression_data_in_one_line(capsys, tmp_path):
    from deploykit.cli.main import main

    assert main(["train", "-q", "--data", "diabetes", "--out", str(tmp_path / "m.keras"), "--epochs", "1"]) == 2
    assert not (tmp_path / "m.keras").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds regression targets; deploykit trains classifiers" in err[0]


def test_optimize_takes_max_rmse_increase_and_task_flags():
    from deploykit.cli.main import build_parser
    from deploykit.cli.optimize import options_from_args

    args = build_parser().parse_args(["optimize", "--task", "regression", "--max-rmse-increase", "0.1"])
    assert options_from_args(args)["max_rmse_increase"] == 0.1 and args.task is Task.REGRESSION
    from deploykit.core.task import OutputKind, resolve_task

    # one linear unit said to classify is a binary classifier's logit (issue 20; it was an error before)
    assert resolve_task(OutputKind.VALUES, 1, task=Task.CLASSIFICATION)[1] is OutputKind.BINARY_LOGITS


def test_the_size_plot_draws_rmse_for_a_regressor(tmp_path):
    from deploykit.pipeline.plots import accuracy_vs_size

    rows = [
        _row("original.keras", 54.42, 0.0, Verdict.REFERENCE),
        _row("model.onnx", 55.1, 0.0125),
        _row("model_int8.onnx", 60.0, 0.1, Verdict.REJECTED),
    ]
    tries = [Try(Stage.SPARSITY, "prune 80%", None, None, 900, True, rmse=55.8, rmse_change=0.025)]
    path = accuracy_vs_size(rows, tries, tmp_path / "a.png", budget=0.05, metric=Metric.RMSE)
    assert path.stat().st_size > 10_000
