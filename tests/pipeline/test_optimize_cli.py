"""``deploykit optimize``, run in-process: help, a small run driven by a TOML file and flags, a bad key."""

from __future__ import annotations

import functools
import json

import pytest

from deploykit.pipeline import OptimizeConfig


def test_help(cli):
    done = cli("optimize", "--help")
    assert done.returncode == 0
    for flag in (
        "--config",
        "--no-fold",
        "--sparsity",
        "--l1",
        "--no-sparsity",
        "--no-compact",
        "--formats",
        "--quantize",
        "--instance-kind",
        "--instances",
        "--no-mc",
        "--samples",
        "--force",
        "--unsafe",
        "--out",
        "--max-accuracy-drop",
        "--strict",
        "--quick",
        "--no-distill",
    ):
        assert flag in done.stdout, flag


def test_unset_int8_flags_keep_the_config_files_knobs():
    from deploykit.cli.main import build_parser
    from deploykit.cli.optimize import options_from_args

    base = OptimizeConfig.from_toml_text("[export.quantization]\nnum_calibration = 50\nper_channel = false\n")
    args = build_parser().parse_args(["optimize", "--calibration", "percentile"])
    knobs = base.with_options(**options_from_args(args)).export.quantization
    assert (knobs.num_calibration, knobs.per_channel, knobs.calibration_method.value) == (50, False, "percentile")


@functools.cache
def _parser():
    """deploykit's CLI parser, built once per process for the cases below, which only parse with it."""
    from deploykit.cli.main import build_parser

    return build_parser()


@pytest.mark.parametrize(
    "flags, check",
    [
        (["--no-fold"], lambda c: not c.fold.enabled),
        (["--no-sparsity"], lambda c: c.sparsity.method.value == "none"),
        (
            ["--sparsity", "0.6", "--epochs", "4"],
            lambda c: c.sparsity.prune.target_sparsity == 0.6 and c.sparsity.prune.epochs == 4,
        ),
        (
            ["--l1", "1e-4", "--threshold", "0.01"],
            lambda c: c.sparsity.method.value == "l1" and c.sparsity.l1.threshold == 0.01,
        ),
        (["--no-compact"], lambda c: not c.compact.enabled),
        (["--no-export"], lambda c: c.export.variants() == []),
        (
            ["--formats", "tflite", "--quantize", "int8-full"],
            lambda c: [(f.value, q.value) for f, q in c.export.variants()] == [("tflite", "int8-full")],
        ),
        (
            ["--formats", "tflite", "--precisions", "int8-weights"],
            lambda c: [(f.value, q.value) for f, q in c.export.variants()] == [("tflite", "int8-weights")],
        ),
        (
            ["--per-tensor", "--calibration", "entropy", "--exclude", "dense_3"],
            lambda c: (
                (
                    c.export.quantization.per_channel,
                    c.export.quantization.calibration_method.value,
                    c.export.quantization.exclude,
                )
                == (False, "entropy", ("dense_3",))
            ),
        ),
        (
            ["--triton", "--instance-kind", "gpu", "--instances", "3"],
            lambda c: (c.export.triton.instance_kind.value, c.export.triton.instances) == ("gpu", 3),
        ),
        (["--triton"], lambda c: c.export.triton),
        (["--no-mc"], lambda c: not c.mc.enabled),
        (["--samples", "12"], lambda c: c.mc.samples == 12),
        (["--no-validate"], lambda c: not c.validate.enabled),
        (["--max-accuracy-drop", "0.005"], lambda c: c.validate.max_accuracy_drop == 0.005),
        (["--strict"], lambda c: c.validate.strict),
        (["--quick"], lambda c: not c.sparsity.search.enabled and not c.sparsity.searching),
        (["--no-distill"], lambda c: not c.sparsity.prune.distill and not c.sparsity.l1.distill),
        (["--sparsity", "0.9"], lambda c: not c.sparsity.searching and c.sparsity.prune.target_sparsity == 0.9),
    ],
)
def test_each_flag_sets_the_config(flags, check):
    from deploykit.cli.optimize import options_from_args

    args = _parser().parse_args(["optimize", *flags])
    config = OptimizeConfig().with_options(**options_from_args(args))
    assert check(config) and config != OptimizeConfig()


def test_sparsity_flags_are_exclusive(cli):
    done = cli("optimize", "--sparsity", "0.5", "--no-sparsity")
    assert done.returncode == 2 and "not allowed with" in done.stderr


def test_bad_config_key_is_one_line_and_exit_2(tmp_path, cli):
    toml = tmp_path / "deploykit.toml"
    toml.write_text("[export]\nformat = ['onnx']\n")
    done = cli("optimize", "--config", toml, "--out", tmp_path / "out")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'format'" in lines[0] and "allowed: enabled, formats" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def model_file(trained_model, tmp_path_factory):
    from deploykit.io.models import save_model

    return save_model(trained_model, tmp_path_factory.mktemp("model") / "small.keras")


def test_small_run_from_toml_and_flags(model_file, tmp_path, cli):
    toml = tmp_path / "run.toml"
    toml.write_text(
        f"[input]\nmodel = '{model_file.as_posix()}'\n[sparsity]\nmethod = 'none'\n"
        "[export]\nformats = ['onnx']\nprecisions = ['float32']\n[validate]\nlatency_repeats = 2\n"
    )
    out = tmp_path / "out"
    done = cli("optimize", "--config", toml, "--no-mc", "--no-compact", "--no-fold", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "step 1/" in done.stderr and "fold" in done.stderr  # progress per step on stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("artifact"))
    assert "compression" in header and "validation" in header  # the table on stdout
    assert "model.onnx" in done.stdout and "pass" in done.stdout
    config = OptimizeConfig.from_toml(out / "deploykit.toml")
    assert config.input.model == str(model_file.resolve()) and not config.mc.enabled and not config.compact.enabled
    report = json.loads((out / "report.json").read_text())
    assert [r["file"] for r in report["artifacts"]] == ["original.keras", "model.keras", "model.onnx"]
    assert {s["step"]: s["status"] for s in report["steps"]}["fold"] == "skipped"
    again = cli("optimize", "--config", out / "deploykit.toml", "--out", out)  # refused: the folder exists
    assert again.returncode == 2 and "--force" in again.stderr


@pytest.mark.slow
def test_exit_1_with_one_line_when_nothing_deployable_meets_the_budget(model_file, tmp_path, capsys):
    from deploykit.cli.main import main

    toml = tmp_path / "run.toml"
    toml.write_text(
        "[sparsity]\nmethod = 'none'\n[export]\nformats = ['onnx']\nquantize = ['float16']\n"
        "[validate]\nlatency_repeats = 2\n[validate.artifacts]\nmax_abs_diff = 1e-12\n"
    )
    out = tmp_path / "out"
    code = main(["optimize", str(model_file), "--config", str(toml), "--no-mc", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(
        "deploykit optimize: nothing deployable meets the accuracy budget (1 pt): rejected model_float16.onnx"
    )
    # model.keras ships (it is no deployable artifact); the fallback, your model as float32 original.onnx, is tried
    # and misses the same 1e-12 tolerance: rejected too, and the run says so
    assert "1 artifacts shipped, 2 rejected" in captured.out
    assert "fallback: every file of the compressed model was rejected in onnx" in captured.out
    assert "rejected model_float16.onnx" in last and "original.onnx (missed: max_abs_diff" in last
    assert (out / "report.md").is_file() and not (out / "model_float16.onnx").exists()
    assert not (out / "original.onnx").exists()


def test_a_users_model_without_data_is_refused_and_the_help_says_what_an_npz_holds(tmp_path, cli):
    """No silent digits: `deploykit optimize MODEL` without --data names the missing option (exit 2, nothing written);
    the shipped model alone still runs on the embedded digits (the README's `deploykit optimize`)."""
    from deploykit.backend import keras
    from deploykit.io.models import save_model

    model = save_model(
        keras.Sequential([keras.Input((30,)), keras.layers.Dense(1, activation="sigmoid")]), tmp_path / "mine.keras"
    )
    for command, out in (("optimize", "o"), ("mc", "m"), ("prune", "p.keras")):
        done = cli(command, model, "--out", tmp_path / out)
        assert done.returncode == 2, (command, done.stderr)
        assert f"--data is needed: {model} is not the shipped digits model" in done.stderr
        assert "digits" not in done.stderr.split("--data is needed")[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.keras"]
    helped = " ".join(cli("optimize", "--help").stdout.split())
    assert "an .npz holding arrays x (inputs" in helped and "one-hot rows [N, C]" in helped
    assert "required for your own model" in helped
