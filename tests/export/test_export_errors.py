"""Bad input: one clear error each, and nothing partial left behind."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import DataError, UsageError, ValidationError
from deploykit.export import ExportConfig, Tolerance, export_bundle, export_onnx, export_tflite, validate


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_unknown_quantization_names(tmp_path, trained_model):
    with pytest.raises(UsageError, match=r"ONNX quantization must be one of .*'int8-static'.*, got 'int4'"):
        export_onnx(trained_model, tmp_path / "m.onnx", quantization="int4")
    with pytest.raises(UsageError, match=r"'int8-static' is not a TFLite variant; choose from .*'int8-weights'"):
        export_tflite(trained_model, tmp_path / "m.tflite", quantization="int8-static")
    assert _listing(tmp_path) == []


def test_full_int8_without_data_is_refused(tmp_path, trained_model):
    with pytest.raises(UsageError, match="representative_data"):
        export_tflite(trained_model, tmp_path / "m.tflite", quantization="int8-full")
    with pytest.raises(UsageError, match="calibration_data"):
        export_onnx(trained_model, tmp_path / "m.onnx", quantization="int8-static")
    with pytest.raises(UsageError, match="int8_io needs full-integer"):
        export_tflite(trained_model, tmp_path / "m.tflite", quantization="int8-weights", int8_io=True)
    assert _listing(tmp_path) == []


def test_bad_calibration_data_is_a_data_error(tmp_path, trained_model):
    with pytest.raises(DataError, match=r"shape \(10,\)"):
        export_tflite(
            trained_model, tmp_path / "m.tflite", quantization="int8-full", representative_data=np.zeros((5, 10))
        )
    bad = np.full((5, 64), np.nan, dtype=np.float32)
    with pytest.raises(DataError, match="NaN"):
        export_onnx(trained_model, tmp_path / "m.onnx", quantization="int8-static", calibration_data=bad)
    assert _listing(tmp_path) == []


def test_output_paths_that_cannot_be_written(tmp_path, trained_model, digits):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        export_onnx(trained_model, blocker / "m.onnx")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        export_onnx(trained_model, tmp_path / "dir.onnx")
    with pytest.raises(UsageError, match=r"needs the \.tflite suffix"):
        export_tflite(trained_model, tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        export_bundle(trained_model, digits, blocker, ExportConfig(formats="onnx"))
    assert blocker.read_text() == "not a folder"
    assert _listing(tmp_path) == ["dir.onnx", "file.txt"]


def test_opset_out_of_range(tmp_path, trained_model):
    with pytest.raises(UsageError, match="opset"):
        export_onnx(trained_model, tmp_path / "m.onnx", opset=7)


def test_validate_refuses_unknown_artifacts(tmp_path, digits):
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="unknown format .pt"):
        validate(tmp_path / "m.pt", digits)
    with pytest.raises(UsageError, match="no such file"):
        validate(tmp_path / "missing.onnx", digits)


def test_a_failed_tolerance_leaves_no_folder(tmp_path, trained_model, digits):
    out = tmp_path / "bundle"
    config = ExportConfig(
        formats="onnx", quantize="float32,int8-dynamic", tolerance=Tolerance(max_abs_diff=1e-9), repeats=2
    )
    with pytest.raises(ValidationError) as info:
        export_bundle(trained_model, digits, out, config)
    assert "model_int8-dynamic.onnx" in info.value.artifact
    assert any(m.check.startswith("model_int8-dynamic.onnx max_abs_diff") for m in info.value.mismatches)
    assert not out.exists()
    assert _listing(tmp_path) == []  # no staging folder either


def test_a_failed_tolerance_leaves_an_existing_folder_untouched_even_with_force(tmp_path, trained_model, digits):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    config = ExportConfig(formats="onnx", quantize="int8-dynamic", tolerance=Tolerance(max_abs_diff=1e-9), repeats=2)
    with pytest.raises(UsageError, match="already exists"):
        export_bundle(trained_model, digits, out, config)
    with pytest.raises(ValidationError):
        export_bundle(trained_model, digits, out, config, force=True)
    assert _listing(tmp_path) == ["bundle", "bundle/old.txt"]
    assert (out / "old.txt").read_text() == "previous run"
