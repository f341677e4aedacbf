"""``optimize --ensemble-members``: the run's model and other trained models as one calibrated deep ensemble."""

from __future__ import annotations

import json

import onnx
import pytest

from deploykit.cli.main import main
from deploykit.errors import DataError, ModelLoadError
from tests.helpers import ships_by_budget


def _member(path, digits, seed: int, classes: int = 10):
    from deploykit.backend import set_seed
    from deploykit.io.models import save_model
    from tests.helpers import build_dense

    set_seed(seed)
    model = build_dense(hidden=(32,), data=digits, bn=False, dropout=0.2, classes=classes)
    model.compile(optimizer="nadam", loss="sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=4, verbose=0)
    save_model(model, path)
    return path


@pytest.mark.slow
def test_optimize_writes_the_ensemble_of_its_model_and_the_members_given(tmp_path, digits, capsys):
    from deploykit.pipeline import OptimizeConfig
    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.temperature import read_temperature

    first, second = _member(tmp_path / "a.keras", digits, 1), _member(tmp_path / "b.keras", digits, 2)
    out = tmp_path / "out"
    assert (
        main(
            [
                "optimize",
                str(first),
                "--data",
                "digits",
                "--out",
                str(out),
                "-q",
                "--sparsity",
                "0.5",
                "--epochs",
                "2",
                "--formats",
                "onnx",
                "--quantize",
                "float32",
                "--no-mc",
                "--target-coverage",
                "0.8",
                "--triton",
                "--ensemble-members",
                str(second),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["steps"] if s["step"] == "ensemble")
    if step["status"] == "missed budget":  # a member's int8 model missed its budget on this machine: no ensemble
        assert "ensemble member" in step["reason"] and not (out / "ensemble").exists()
        return
    row = next(a for a in report["artifacts"] if a["file"] == "ensemble/ensemble.onnx")
    within = ships_by_budget(row, report)
    assert step["status"] == "done" and (row["verdict"] == "pass") == within, row  # held to the run's budget
    assert row["format"] == "onnx-ensemble" and row["quantization"] == "int8-dynamic"
    if row["verdict"] == "pass":
        path = out / "ensemble" / "ensemble.onnx"
        assert read_temperature(onnx.load(str(path))) is not None  # calibrated on the validation split by default
        result = UncertaintyPredictor(path).predict(digits.x_test)
        assert result.samples == 2 and result.abstain is not None  # [mc] target_coverage gives it its threshold
        assert result.abstain.mean() == pytest.approx(1 - step["detail"]["comparison"]["selective"]["test"]["coverage"])
        for k in (0, 1):
            assert (out / "ensemble" / "members" / f"member{k}.onnx").exists()
            assert (out / "ensemble" / "members" / f"member{k}.keras").exists()
        assert "## Deterministic vs deep ensemble" in (out / "report.md").read_text()
        assert (out / "triton" / "ensemble" / "1" / "model.onnx").exists()  # served beside the other ONNX models
    else:
        assert not (out / "ensemble").exists()  # a rejected ensemble leaves nothing behind
    config = OptimizeConfig.from_toml(out / "deploykit.toml")  # the run repeats with its members
    assert config.ensemble.members == (str(second.resolve()),)


def test_a_member_that_cannot_be_used_fails_before_the_run(tmp_path, digits, random_bn_model):
    from deploykit.io.models import save_model
    from deploykit.pipeline import optimize

    with pytest.raises(ModelLoadError, match="nope.keras"):
        optimize(random_bn_model(0), digits, out_dir=tmp_path / "a", ensemble_members=[str(tmp_path / "nope.keras")])
    assert not (tmp_path / "a").exists()
    from deploykit.backend import keras

    regressor = keras.Sequential([keras.Input((64,)), keras.layers.Dense(1)])
    save_model(regressor, tmp_path / "r.keras")
    with pytest.raises(
        DataError, match=r"ensemble member .*r\.keras: data 'digits' has 10 classes, but model .* outputs 1"
    ):
        optimize(random_bn_model(0), digits, out_dir=tmp_path / "b", ensemble_members=[str(tmp_path / "r.keras")])
    assert not (tmp_path / "b").exists()


def test_the_ensemble_table_round_trips_and_refuses_bad_values():
    from deploykit.errors import ConfigError
    from deploykit.pipeline import OptimizeConfig

    config = OptimizeConfig().with_options(ensemble_members=["m2.keras", "m3.keras"], ensemble_mc_samples=10)
    assert config.ensemble.enabled and "ensemble of 3" in config.summary()
    assert OptimizeConfig.from_toml_text(config.to_toml()).ensemble == config.ensemble
    assert not OptimizeConfig().ensemble.enabled and "ensemble" not in OptimizeConfig().summary()
    for bad, field in (
        (dict(ensemble_members="m2.keras"), "ensemble.members"),
        (dict(ensemble_members=["m2.keras"], ensemble_mc_samples=0), "ensemble.mc_samples"),
    ):
        with pytest.raises(ConfigError, match=field):
            OptimizeConfig().with_options(**bad)


def test_a_member_that_misses_its_budget_leaves_no_ensemble_and_the_run_goes_on(tmp_path, digits, random_bn_model):
    """optimize_members raises StepError when a member has no int8 model within the budget; the step records
    `missed budget` with that reason, removes what it began, and returns the model unchanged."""
    from deploykit.errors import StepError
    from deploykit.io.models import save_model
    from deploykit.pipeline import OptimizeConfig
    from deploykit.pipeline.records import Status
    from deploykit.pipeline.steps import RunContext, model_figures
    from deploykit.pipeline.uncertainty_steps import ensemble_step

    model = random_bn_model(0, data=digits)
    save_model(random_bn_model(1, data=digits), tmp_path / "b.keras")
    config = OptimizeConfig().with_options(ensemble_members=[str(tmp_path / "b.keras")])
    figures = model_figures(model, digits)
    ctx = RunContext(digits, config, tmp_path / "run", lambda m: None, model, figures, figures)
    (tmp_path / "run").mkdir()

    def optimize(member, data, out_dir, **options):  # what optimize_members meets when member 1 misses its budget
        out_dir.mkdir(parents=True)
        raise StepError(
            "ensemble member 1: no int8 ONNX model within the accuracy budget (accuracy drop 2.1 pt)", step="ensemble"
        )

    out = ensemble_step(optimize, model, ctx)
    assert out.record.status is Status.MISSED and "ensemble member 1: no int8 ONNX model" in out.record.reason
    assert out.model is model and out.artifacts == () and not (tmp_path / "run" / "ensemble").exists()
