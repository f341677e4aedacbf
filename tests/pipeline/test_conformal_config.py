"""The conformal options are declared once: the [conformal] table, the flat options and the CLI flags agree."""

from __future__ import annotations

import pytest

from deploykit.errors import ConfigError
from deploykit.pipeline import OptimizeConfig


def test_flat_options_fill_the_conformal_table_and_round_trip():
    config = OptimizeConfig().with_options(
        conformal=0.95, conformal_method="LAC", conformal_by_class=True, target_accuracy=0.9, target_delta=0.05
    )
    assert (config.conformal.coverage, config.conformal.method, config.conformal.by_class) == (0.95, "lac", True)
    assert config.conformal.config().alpha == pytest.approx(0.05)
    assert config.mc.selective_target().target_delta == 0.05
    again = OptimizeConfig.from_toml_text(config.to_toml())
    assert again.conformal == config.conformal and again.mc.target_delta == 0.05
    assert OptimizeConfig().conformal.config() is None  # off by default


@pytest.mark.parametrize(
    "toml, match",
    [
        ("[conformal]\ncoverage = 1.0\n", "conformal.coverage must be a number in \\(0, 1\\)"),
        ("[conformal]\ncoverage = 0.9\nmethod = 'normalized'\n", "conformal.method is one of raps, aps, lac"),
        ("[conformal]\nby_class = true\n", "need conformal.coverage"),
        ("[conformal]\ncoverage = 0.9\nalpha = 0.1\n", "unknown key 'alpha'"),
        ("[mc]\ntarget_delta = 0\n", "mc.target_delta"),
    ],
)
def test_bad_conformal_values_name_the_key(toml, match):
    with pytest.raises(ConfigError, match=match):
        OptimizeConfig.from_toml_text(toml)


def test_cli_flags_are_refused_before_any_work(tmp_path, capsys):
    from deploykit.cli.main import main

    assert main(["mc", "x.keras", "--conformal-by-class", "--out", str(tmp_path / "o")]) == 2
    assert "need --conformal COVERAGE" in capsys.readouterr().err
    assert main(["export", "x.keras", "--conformal", "0.9", "--out", str(tmp_path / "o")]) == 2
    assert "give --data" in capsys.readouterr().err
    assert (
        main(
            [
                "mc",
                "x.keras",
                "--target-accuracy",
                "0.9",
                "--target-delta",
                "0.1",
                "--point-estimate",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "o").exists()
