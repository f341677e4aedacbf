"""The optimize pipeline's MC step through mc_bundle: config fields, flags, and what report.json / report.md hold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.errors import ConfigError
from deploykit.pipeline import OptimizeConfig
from deploykit.pipeline.tables import MCStep


def test_mc_fields_validate_and_round_trip_through_toml():
    config = OptimizeConfig(mc=MCStep(temperature=False, target_accuracy=0.99))
    assert OptimizeConfig.from_toml_text(config.to_toml()) == config
    assert "temperature = false" in config.to_toml() and "target_coverage" not in config.to_toml()
    assert MCStep().temperature and MCStep().target_accuracy is None and MCStep().target_coverage is None
    with pytest.raises(ConfigError, match="contradict"):
        MCStep(target_accuracy=0.9, target_coverage=0.5)
    for bad in (0, 1.5, True, "0.9", float("nan")):
        with pytest.raises(ConfigError, match=r"mc.target_coverage must be a number in \(0, 1\]"):
            MCStep(target_coverage=bad)
    with pytest.raises(ConfigError, match="mc.temperature must be true or false"):
        OptimizeConfig.from_toml_text("[mc]\ntemperature = 1\n")
    with pytest.raises(ConfigError, match="input.ood_data must be a path"):
        OptimizeConfig.from_toml_text("[input]\nood_data = 3\n")


def test_a_regressors_target_rmse_validates_round_trips_and_comes_from_the_flag():
    config = OptimizeConfig(mc=MCStep(target_rmse=40.0))
    assert OptimizeConfig.from_toml_text(config.to_toml()) == config
    assert config.mc.selective_target().target_rmse == 40.0 and MCStep().selective_target() is None
    with pytest.raises(ConfigError, match="contradict"):
        MCStep(target_rmse=40.0, target_coverage=0.5)
    for bad in (0, -1.0, "40"):
        with pytest.raises(ConfigError, match="mc.target_rmse"):
            MCStep(target_rmse=bad)
    from deploykit.cli.main import build_parser
    from deploykit.cli.optimize import options_from_args

    args = build_parser().parse_args(["optimize", "--target-rmse", "35"])
    flagged = OptimizeConfig(mc=MCStep(target_accuracy=0.9)).with_options(**options_from_args(args))
    assert flagged.mc.target_rmse == 35.0 and flagged.mc.target_accuracy is None


def test_the_mask_kind_is_one_typed_field_from_config_flag_to_mc_config():
    from deploykit.cli.main import build_parser
    from deploykit.cli.optimize import options_from_args
    from deploykit.core.contract import MaskKind

    config = OptimizeConfig(mc=MCStep(mask="dropout"))
    assert config.mc.mask is MaskKind.DROPOUT and 'mask = "dropout"' in config.to_toml()
    assert OptimizeConfig.from_toml_text(config.to_toml()) == config and MCStep().mask is MaskKind.AUTO
    with pytest.raises(ConfigError, match="mc.mask"):
        MCStep(mask="bits")
    args = build_parser().parse_args(["optimize", "--mask", "dropout"])
    assert OptimizeConfig().with_options(**options_from_args(args)).mc.mask is MaskKind.DROPOUT
    assert build_parser().parse_args(["mc", "m.keras", "--out", "o", "--mask", "dropout"]).mask == "dropout"


def test_optimize_flags_set_the_mc_fields(tmp_path):
    from deploykit.cli.main import build_parser
    from deploykit.cli.optimize import options_from_args

    base = OptimizeConfig(mc=MCStep(target_coverage=0.5))
    args = build_parser().parse_args(
        ["optimize", "--no-temperature", "--target-accuracy", "0.95", "--ood-data", str(tmp_path / "ood.npy")]
    )
    config = base.with_options(**options_from_args(args))
    assert not config.mc.temperature and config.mc.target_accuracy == 0.95
    assert config.mc.target_coverage is None  # the flag's target replaces the config file's
    assert config.input.ood_data == str((tmp_path / "ood.npy").resolve())
    unset = base.with_options(**options_from_args(build_parser().parse_args(["optimize"])))
    assert unset == base


@pytest.mark.slow
def test_optimize_report_holds_temperature_selective_and_ood(tmp_path, digits, random_bn_model):
    from deploykit.core.contract import ABSTAIN_OUTPUT, SELECTIVE_KEY, TEMPERATURE_KEY
    from deploykit.pipeline import optimize
    from deploykit.pipeline.tables import ValidateStep

    ood = tmp_path / "ood.npz"
    np.savez(ood, x=np.random.default_rng(1).uniform(0, 16, (50, 64)).astype(np.float32))
    config = OptimizeConfig(validate=ValidateStep(latency_repeats=2)).with_input(ood_data=str(ood))
    result = optimize(
        random_bn_model(1, data=digits),
        digits,
        config=config,
        out_dir=tmp_path / "out",
        sparsity="none",
        compact=False,
        formats="onnx",
        quantize="float32",
        samples=8,
        mc_seed=0,
        target_coverage=0.7,
        max_accuracy_drop=0.5,
    )
    mc = result.report["mc"]
    t = mc["temperature"]
    assert t["fit"]["placement"] in ("per_sample", "mean")
    if t["fit"]["temperature"] != 1.0:  # kept only when it generalises (cross-validated on the validation split)
        assert t["fit"]["nll_after"] < t["fit"]["nll_before"]
    else:
        assert t["fit"]["nll_after"] == t["fit"]["nll_before"]
    assert (
        mc["selective"]["chosen"]["target"]["target_coverage"] == 0.7 and 0 <= mc["selective"]["test"]["coverage"] <= 1
    )
    assert {r["measure"] for r in mc["ood"]} == {"max_prob", "entropy", "mutual_information"}
    assert json.loads((result.out_dir / "report.json").read_text())["mc"]["selective"] == mc["selective"]
    text = (result.out_dir / "report.md").read_text()
    for heading in ("### Temperature scaling", "### Selective prediction", "### Out-of-distribution detection"):
        assert heading in text
    assert "![risk_coverage.png](risk_coverage.png)" in text and (result.out_dir / "risk_coverage.png").is_file()
    import onnx
    import onnxruntime as ort

    path = result.out_dir / "model_mc.onnx"
    keys = {p.key for p in onnx.load(str(path)).metadata_props}
    assert {TEMPERATURE_KEY, SELECTIVE_KEY, "deploykit.steps"} <= keys
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert ABSTAIN_OUTPUT in [o.name for o in session.get_outputs()]
    step = next(s for s in result.steps if s.step == "mc dropout")
    assert "temperature" in step.reason and "abstain when entropy" in step.reason

    # the deterministic models' temperature is folded into model.keras itself: model.onnx reproduces it as it is
    from deploykit.export.metadata import read_metadata

    decision = next(s for s in result.steps if s.step == "temperature").detail
    steps = read_metadata(onnx.load(str(result.out_dir / "model.onnx"))).steps
    assert any(s.startswith("temperature(") for s in steps) == decision.kept, (steps, decision)
    probs = ort.InferenceSession(str(result.out_dir / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": digits.x_test}
    )[0]
    keras = np.asarray(result.model(digits.x_test, training=False))
    row = result.artifact("model.onnx")
    assert np.abs(probs - keras).max() == pytest.approx(row.max_abs_diff, abs=1e-6)
    assert row.max_abs_diff < 1e-4 and row.size_bytes == (result.out_dir / "model.onnx").stat().st_size


@pytest.mark.slow
def test_no_temperature_leaves_the_graphs_raw(tmp_path, digits, random_bn_model):
    import onnx

    from deploykit.core.contract import TEMPERATURE_KEY
    from deploykit.pipeline import optimize

    result = optimize(
        random_bn_model(1, data=digits),
        digits,
        out_dir=tmp_path / "out",
        sparsity="none",
        compact=False,
        formats="onnx",
        quantize="float32",
        samples=8,
        mc_seed=0,
        temperature=False,
        max_accuracy_drop=0.5,
    )
    for name in ("model.onnx", "model_mc.onnx"):
        assert TEMPERATURE_KEY not in {p.key for p in onnx.load(str(result.out_dir / name)).metadata_props}
    assert result.report["mc"]["temperature"] is None and "temperature" not in result.artifact("model.onnx").checks
    assert not result.config.export.temperature and not result.config.mc.temperature


def test_a_bad_ood_file_fails_before_the_run(tmp_path, cli):
    (tmp_path / "ood.csv").write_text("1,2\n")
    done = cli("optimize", "--ood-data", tmp_path / "ood.csv", "--out", tmp_path / "out")
    assert done.returncode == 1 and "OOD data" in done.stderr and "step 1/" not in done.stderr
    assert not (tmp_path / "out").exists()
