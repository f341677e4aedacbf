"""The pipeline as data: every option declared once (deploykit.pipeline.registry) and accepted alike by the API, the
TOML file and the CLI; the runner builds its steps from the registry; the earlier ``[search]`` table still reads."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from deploykit.errors import ConfigError
from deploykit.pipeline import OptimizeConfig, build_pipeline
from deploykit.pipeline.options import Cli, shown
from deploykit.pipeline.registry import OPTIONS_BY_NAME, STEPS, TABLES


def _merged(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _given(option) -> tuple[dict, dict, list[str]]:
    """(flat options, TOML tables, CLI flags) of the option's example and of what it needs beside it."""
    flat, toml, argv = {}, {}, []
    for name, value in option.needs.items():
        need = dataclasses.replace(OPTIONS_BY_NAME[name], example=value)
        flat[name], toml, argv = value, _merged(toml, need.example_toml()), argv + need.example_argv()
    flat[option.name] = option.example
    return flat, _merged(toml, option.example_toml()), argv + option.example_argv()


@functools.cache
def _optimize_parser():
    """The ``optimize`` subparser, built once per process (the tests only read it and parse with it: building the
    whole CLI is ~20 ms of CPU, and this file asked for it once per option)."""
    from deploykit.cli.main import build_parser

    return build_parser()._subparsers._group_actions[0].choices["optimize"]


@pytest.mark.parametrize("option", OPTIONS_BY_NAME.values(), ids=lambda o: o.name)
def test_every_option_has_one_declaration_the_api_toml_and_cli_accept(option):
    from deploykit.cli.optimize import options_from_args

    flat, toml, argv = _given(option)
    api = OptimizeConfig().with_options(**flat)
    assert api != OptimizeConfig().with_options(**{k: v for k, v in flat.items() if k != option.name}), (
        f"{option.name}={option.example!r} changes nothing"
    )
    assert OptimizeConfig.from_dict(toml) == api, f"[{option.table}] {toml} is not {option.name}={option.example!r}"
    assert OptimizeConfig.from_toml_text(api.to_toml()) == api  # the run's deploykit.toml repeats it
    if option.cli is Cli.NONE:  # a deprecated spelling: API and TOML only
        return
    parser = _optimize_parser()
    for flag in [a for a in argv if a.startswith("--")] + ([option.flag] if option.argv is None else []):
        action = parser._option_string_actions.get(flag)
        assert action is not None and action.help, f"optimize has no {flag} with help"
    args = parser.parse_args(argv)
    assert OptimizeConfig().with_options(**options_from_args(args)) == api, f"{' '.join(argv)} != {flat}"


def test_options_and_flags_are_declared_once():
    names = [o.name for t in TABLES for o in t.options]
    assert len(names) == len(set(names))
    flags = [o.flag for t in TABLES for o in t.options if o.cli is not Cli.NONE]
    assert len(flags) == len(set(flags))
    for table in TABLES:  # each option sets keys of tables that exist, and fields that exist
        for option in table.options:
            for key in option.keys:
                where, _, field = key.partition(".")
                assert where in {t.name for t in TABLES}, key
                cls = next(t.cls for t in TABLES if t.name == where)
                assert field.split(".")[0] in {f.name for f in dataclasses.fields(cls)} | {
                    "precisions",
                    "onnx_int8",
                    "tflite_int8",
                }, key


def test_a_default_in_the_help_is_the_dataclass_default():
    parser = _optimize_parser()
    for table in TABLES:
        for option in table.options:
            if "{default}" in option.help:
                text = parser._option_string_actions[option.flag].help
                assert "{default}" not in text and shown(table.default_of(option)) in text, option.name
    assert "(default: 30)" in parser._option_string_actions["--epochs"].help  # [sparsity.prune] epochs


def test_an_unknown_option_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown option 'sparsty' \(allowed: .*\bsparsity, "):
        OptimizeConfig().with_options(sparsty=0.5)
    with pytest.raises(ConfigError, match="fold must be"):
        OptimizeConfig().with_options(fold="yes")


def test_the_runner_builds_its_steps_from_the_registry_in_order():
    config = OptimizeConfig().with_options(formats="onnx", quantize="float32")
    names = [s.name for s in build_pipeline(config)]
    assert names == [
        "structured",
        "sparsity",
        "fold",
        "compact",
        "temperature",
        "save model",
        "export onnx float32",
        "fallback",
        "objective",
        "mc dropout",
    ]
    assert [s.name for s in STEPS][:6] == names[:6]
    off = [s.name for s in build_pipeline(config.with_options(export=False))]
    assert "export" in off and not any(n.startswith("export ") for n in off)  # switched off says so itself
    more = [s.name for s in build_pipeline(config.with_options(triton=True, ensemble_members=["/models/b.keras"]))]
    assert more[-2:] == ["ensemble", "triton"]


def test_the_earlier_search_table_is_read_as_plan_with_a_future_warning():
    with pytest.warns(FutureWarning, match=r"\[search\] is now \[plan\]"):
        old = OptimizeConfig.from_toml_text('[search]\ntime_budget = 10\nray = "local"\n')
    assert old == OptimizeConfig.from_toml_text('[plan]\ntime_budget = 10\nray = "local"\n')
    assert old.plan.time_budget == old.search.time_budget == 10.0
    assert "[plan]" in old.to_toml() and "[search]" not in old.to_toml()
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match=r"search\.time_budget"):
        OptimizeConfig.from_toml_text("[search]\ntime_budget = -1\n")  # the error names the table as written
    with pytest.raises(ConfigError, match=r"plan\.time_budget"):
        OptimizeConfig.from_toml_text("[plan]\ntime_budget = -1\n")
    with pytest.raises(ConfigError, match="give one"):
        OptimizeConfig.from_toml_text("[search]\nray = 'local'\n[plan]\nray = 'local'\n")
