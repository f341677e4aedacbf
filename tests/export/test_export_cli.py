"""``deploykit export``, run in-process: the artifacts, the validation table, Triton, and clean failures."""

from __future__ import annotations

import json

import pytest

from deploykit.export.metadata import read_metadata


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, trained_model):
    from deploykit.io import save_model

    return save_model(trained_model, tmp_path_factory.mktemp("cli") / "digits.keras")


def test_writes_every_artifact_the_table_and_triton(tmp_path, model_file, cli):
    out = tmp_path / "out"
    result = cli("export", model_file, "--format", "onnx,tflite", "--quantize", "none,int8", "--out", out, "--triton", "--repeats", "3",
                  "--steps", "fold_batchnorm, prune(0.80)")
    assert result.returncode == 0, result.stderr
    names = ["model.onnx", "model_int8.onnx", "model.tflite", "model_int8.tflite"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "validation.json", "validation.md", "triton"])
    summary = json.loads((out / "validation.json").read_text())
    assert [a["export"]["path"] for a in summary["artifacts"]] == names
    assert [a["export"]["quantization"] for a in summary["artifacts"]] == ["none", "int8-static", "none", "int8"]
    assert all(a["validation"]["passed"] for a in summary["artifacts"])
    steps = read_metadata(out / "model.onnx").steps
    assert steps[:2] == ["fold_batchnorm", "prune(0.80)"] and steps[-1] == "onnx(opset=17)"
    table = (out / "validation.md").read_text()
    assert table == result.stdout[: len(table)]
    for name in names:
        assert f"| {name} |" in table
    assert sorted(p.name for p in (out / "triton").iterdir()) == ["model", "model_int8"]
    config = (out / "triton" / "model" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and 'name: "input"' in config and "dims: [ 64 ]" in config
    assert (out / "triton" / "model_int8" / "1" / "model.onnx").read_bytes() == (out / "model_int8.onnx").read_bytes()


def test_a_failed_tolerance_exits_1_and_leaves_the_old_folder(tmp_path, model_file, capsys):
    """The old folder stays when validation fails after the export."""
    from deploykit.cli.main import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code = main(["export", str(model_file), "--format", "onnx", "--quantize", "dynamic", "--out", str(out), "--force",
                 "--max-diff", "1e-9", "--repeats", "2"])
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("deploykit export: error:") and "failed validation" in error and "max_abs_diff" in error
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx,zip"], "unknown format 'zip'"),
    (["--quantize", "int4"], "unknown quantization 'int4'"),
    (["--format", "tflite", "--triton"], "triton needs the onnx format"),
    (["--opset", "5"], "opset must be an integer"),
])
def test_bad_options_exit_2_before_any_work(tmp_path, args, message, cli):
    out = tmp_path / "out"
    result = cli("export", tmp_path / "absent.keras", "--out", out, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not out.exists()


def test_an_output_path_that_is_a_file_exits_2(tmp_path, cli):
    blocker = tmp_path / "out"
    blocker.write_text("x")
    result = cli("export", tmp_path / "absent.keras", "--out", blocker)
    assert result.returncode == 2
    assert "is a file, not a folder" in result.stderr
    assert blocker.read_text() == "x"
