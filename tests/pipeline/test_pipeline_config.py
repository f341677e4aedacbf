"""OptimizeConfig: validation on construction, flat options, TOML round trip, one clear error per bad key."""

from __future__ import annotations

import pytest

from deploykit.errors import ConfigError
from deploykit.export.config import ExportFormat, Quantization
from deploykit.pipeline import OptimizeConfig, SparsityMethod
from deploykit.pipeline.tables import DEFAULT_TUNE_EPOCHS, ExportStep, MCStep, ValidateStep


def test_defaults_turn_every_step_on():
    c = OptimizeConfig()
    assert c.fold.enabled and c.compact.enabled and c.export.enabled and c.mc.enabled and c.validate.enabled
    assert c.sparsity.method is SparsityMethod.PRUNE and c.sparsity.prune.target_sparsity == 0.8
    assert c.sparsity.prune.epochs == DEFAULT_TUNE_EPOCHS
    assert len(c.export.variants()) == 6


@pytest.mark.parametrize(
    "config",
    [
        OptimizeConfig(),
        OptimizeConfig().with_options(
            l1=3e-4,
            threshold=0.05,
            epochs=3,
            formats="onnx",
            precisions=["int8"],
            onnx_int8="static",
            triton=True,
            samples=7,
            mc_seed=3,
            fold=False,
            validate=False,
        ),
        OptimizeConfig(validate=ValidateStep(artifacts={"max_abs_diff": 1e-3}, latency_repeats=4)).with_input(
            model="some/model.keras", data="fashion.npz", seed=7
        ),
    ],
)
def test_toml_round_trip(config, tmp_path):
    path = tmp_path / "deploykit.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    again = OptimizeConfig.from_toml(path)
    assert again == config
    assert again.to_toml() == config.to_toml()


def test_partial_toml_keeps_the_defaults_elsewhere():
    c = OptimizeConfig.from_toml_text('[sparsity]\nmethod = "l1"\n[sparsity.l1]\nthreshold = 0.05\n[mc]\nsamples = 5\n')
    assert c.sparsity.method is SparsityMethod.L1 and c.sparsity.l1.threshold == 0.05
    assert c.sparsity.l1.epochs == DEFAULT_TUNE_EPOCHS and c.sparsity.l1.l1 == 1e-3
    assert c.mc == MCStep(samples=5) and c.export == ExportStep()


@pytest.mark.parametrize(
    "text, key",
    [
        ("[fold]\nenable = false\n", "'enable'"),
        ("[folds]\nenabled = false\n", "[folds]"),
        ("[sparsity.prune]\ntarget = 0.5\n", "'target'"),
        ("[sparsity]\nprunning = {}\n", "'prunning'"),
        ("[export]\nformat = ['onnx']\n", "'format'"),
        ("[validate.artifacts]\nmax_diff = 1.0\n", "'max_diff'"),
    ],
)
def test_unknown_key_is_one_clear_error(text, key):
    with pytest.raises(ConfigError) as info:
        OptimizeConfig.from_toml_text(text, source="deploykit.toml")
    message = str(info.value)
    assert "\n" not in message and key in message and "allowed" in message and message.startswith("deploykit.toml")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[export]\nprecisions = ['int4']\n", "export.precisions"),
        ("[export]\nformats = ['onnx', 'onnx']\n", "twice"),
        ("[sparsity]\nmethod = 'random'\n", "sparsity.method"),
        ("[sparsity.prune]\ntarget_sparsity = 1.5\n", "target_sparsity"),
        ("[sparsity.prune]\ncompact = true\n", "[compact]"),
        ("[mc]\nsamples = 0\n", "mc.samples"),
        ("[fold]\nenabled = 'yes'\n", "fold.enabled"),
        ("[fold\n", "not valid TOML"),
    ],
)
def test_bad_values_name_the_field(text, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        OptimizeConfig.from_toml_text(text)
    assert fragment in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        OptimizeConfig.from_toml(tmp_path / "absent.toml")


def test_flat_options():
    c = OptimizeConfig().with_options(
        sparsity=0.6, formats="tflite", precisions="float32,int8", mc=False, compact=False
    )
    assert c.sparsity.prune.target_sparsity == 0.6 and c.sparsity.method is SparsityMethod.PRUNE
    assert c.export.variants() == [
        (ExportFormat.TFLITE, Quantization.FLOAT32),
        (ExportFormat.TFLITE, Quantization.INT8_FULL),
    ]
    assert not c.mc.enabled and not c.compact.enabled
    assert OptimizeConfig().with_options(sparsity="none").sparsity.method is SparsityMethod.NONE
    assert OptimizeConfig().with_options(sparsity=False).sparsity.method is SparsityMethod.NONE
    assert OptimizeConfig().with_options(l1=1e-4).sparsity.method is SparsityMethod.L1
    assert Quantization.INT8_STATIC in OptimizeConfig().with_options(onnx_int8="static").export.quantize
    assert OptimizeConfig().with_options(export=False).export.variants() == []
    assert OptimizeConfig().with_options(fold=None) == OptimizeConfig()  # None: not given


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"sparsty": 0.5}, "'sparsty'"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": "none", "l1": 1e-3}, "contradict"),
        ({"fold": "no"}, "fold"),
        ({"epochs": 0}, "epochs"),
        ({"formats": "onnx,pb"}, "export.formats"),
    ],
)
def test_bad_options(options, fragment):
    with pytest.raises(ConfigError) as info:
        OptimizeConfig().with_options(**options)
    assert fragment in str(info.value)


def test_configs_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        OptimizeConfig().fold.enabled = False  # type: ignore[misc]


def test_the_budget_defaults_to_one_point_and_round_trips(tmp_path):
    config = OptimizeConfig()
    assert config.validate.max_accuracy_drop == 0.01 and not config.validate.strict
    assert config.sparsity.searching and config.sparsity.prune.distill
    changed = config.with_options(max_accuracy_drop=0.005, strict=True, quick=True)
    path = tmp_path / "deploykit.toml"
    path.write_text(changed.to_toml())
    assert OptimizeConfig.from_toml(path) == changed
    assert "budget 0.5 pt" in changed.summary() and "prune to 80%" in changed.summary()
    with pytest.raises(ConfigError, match="max_accuracy_drop"):
        config.with_options(max_accuracy_drop=1.5)
    with pytest.raises(ConfigError, match=r"\[sparsity.search\]: unknown key 'target'"):
        OptimizeConfig.from_toml_text("[sparsity.search]\ntarget = [0.9]\n")
