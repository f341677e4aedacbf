"""``deploykit export`` in-process (``main([...])``): the artifacts, the validation table, Triton, and clean
failures."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from deploykit.cli.main import main
from deploykit.export.metadata import read_metadata


def _run(capsys, *args):
    capsys.readouterr()
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, trained_model):
    from deploykit.io.models import save_model

    return save_model(trained_model, tmp_path_factory.mktemp("cli") / "digits.keras")


def test_writes_every_artifact_the_table_and_triton(tmp_path, model_file, capsys):
    out = tmp_path / "out"
    result = _run(
        capsys,
        model_file,
        "--formats",
        "onnx,tflite",
        "--quantize",
        "float32,int8-static,int8-full",
        "--out",
        out,
        "--data",
        "digits",
        "--triton",
        "--repeats",
        "3",
        "--steps",
        "fold_batchnorm, prune(0.80)",
    )
    assert result.returncode == 0, result.stderr
    names = ["model.onnx", "model_int8-static.onnx", "model.tflite", "model_int8-full.tflite"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*names, "validation.json", "validation.md", "triton", "kserve.yaml"]
    )
    summary = json.loads((out / "validation.json").read_text())
    assert [a["export"]["path"] for a in summary["artifacts"]] == names
    assert [a["export"]["quantization"] for a in summary["artifacts"]] == [
        "float32",
        "int8-static",
        "float32",
        "int8-full",
    ]
    assert all(a["validation"]["passed"] for a in summary["artifacts"])
    steps = read_metadata(out / "model.onnx").steps
    assert steps[:2] == ["fold_batchnorm", "prune(0.80)"] and steps[-1] == "onnx(opset=17)"
    table = (out / "validation.md").read_text()
    assert table == result.stdout[: len(table)]
    for name in names:
        assert f"| {name} |" in table
    assert sorted(p.name for p in (out / "triton").iterdir()) == ["model", "model_int8-static"]
    config = (out / "triton" / "model" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and 'name: "input"' in config and "dims: [ 64 ]" in config
    assert (out / "triton" / "model_int8-static" / "1" / "model.onnx").read_bytes() == (
        out / "model_int8-static.onnx"
    ).read_bytes()


def test_a_failed_tolerance_exits_1_and_leaves_the_old_folder(tmp_path, model_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code = main(
        [
            "export",
            str(model_file),
            "--formats",
            "onnx",
            "--quantize",
            "int8-dynamic",
            "--data",
            "digits",
            "--out",
            str(out),
            "--force",
            "--max-diff",
            "1e-9",
            "--repeats",
            "2",
        ]
    )
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("deploykit export: error:") and "failed validation" in error and "max_abs_diff" in error
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--formats", "onnx,zip"], "format must be one of 'onnx', 'tflite', got 'zip'"),
        (
            ["--quantize", "int4"],
            "quantization must be one of 'float32', 'float16', 'int8-dynamic', 'int8-static', "
            "'int8-static-per-tensor', 'int8-full', 'int8-weights', got 'int4'",
        ),
        (
            ["--quantize", "int8"],
            "'int8' was renamed: use int8-dynamic or int8-static (ONNX), int8-full or int8-weights (TFLite)",
        ),
        (["--quantize", "none"], "'none' was renamed: use float32"),
        (["--formats", "tflite", "--quantize", "int8-static"], "'int8-static' exists only in onnx"),
        (["--formats", "tflite", "--triton"], "triton needs the onnx format"),
        (["--triton", "--instances", "0"], "instances must be an integer >= 1"),
        (["--opset", "5"], "opset must be an integer"),
    ],
)
def test_bad_options_exit_2_before_any_work(tmp_path, args, message, capsys):
    out = tmp_path / "out"
    result = _run(capsys, tmp_path / "absent.keras", "--out", out, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not out.exists()


def test_an_output_path_that_is_a_file_exits_2(tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("x")
    result = _run(capsys, tmp_path / "absent.keras", "--out", blocker)
    assert result.returncode == 2
    assert "is a file, not a folder" in result.stderr
    assert blocker.read_text() == "x"


def test_the_renamed_format_option_still_works_once_with_a_warning(tmp_path, model_file, capsys):
    out = tmp_path / "out"
    result = _run(capsys, model_file, "--format", "onnx", "--quantize", "float16", "--out", out, "--repeats", "2")
    assert result.returncode == 0, result.stderr
    assert "warning: --format is deprecated; use --formats" in result.stderr
    assert sorted(p.name for p in out.glob("model*")) == ["model_float16.onnx"]
