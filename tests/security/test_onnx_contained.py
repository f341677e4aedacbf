"""ONNX files handed to onnxruntime (issue 26 items 1, 2, 6): external data contained by deploykit itself, read into
memory at load, and what a file declares bounded before anything is allocated."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from deploykit.errors import ModelLoadError
from deploykit.onnx.sessions import onnx_session
from tests.security import hostile_onnx


@pytest.fixture
def served(tmp_path):
    """A model folder inside ``tmp_path`` with a secret file beside (outside) it."""
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(hostile_onnx.SECRET)
    return folder


def _refused(path, *needles):
    with pytest.raises(ModelLoadError) as info:
        onnx_session(path)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_honest_external_data_loads_and_runs(tmp_path):
    path = hostile_onnx.honest_external_model(tmp_path)
    session = onnx_session(path)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], x @ hostile_onnx.WEIGHTS, rtol=1e-6)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "ABSOLUTE"])
def test_location_out_of_the_folder_is_refused(served, location):
    location = str(served.parent / "secret.bin") if location == "ABSOLUTE" else location
    path = hostile_onnx.external_data_model(served, location)
    _refused(path, "tensor 'W'", repr(location))


def test_symlink_leaving_the_folder_is_refused(served):
    os.symlink(served.parent / "secret.bin", served / "weights.bin")
    _refused(hostile_onnx.external_data_model(served, "weights.bin"), "leads out of the model's folder")


def test_span_past_the_end_of_the_file_is_refused(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 48)
    _refused(hostile_onnx.external_data_model(tmp_path, "w.bin", offset=8), "offset 8 + length 48", "holds 48 bytes")


def test_length_that_disagrees_with_the_shape_is_refused(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 4096)
    _refused(hostile_onnx.external_data_model(tmp_path, "w.bin", length=None), "holds 4096 bytes", "needs 48")


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder"])
def test_external_data_must_be_a_regular_file(tmp_path, kind):
    target = tmp_path / "w.bin"
    if kind == "dev-zero":
        os.symlink("/dev/zero", target)
        _refused(hostile_onnx.external_data_model(tmp_path, "w.bin"), "leads out of the model's folder")
        return
    if kind == "fifo":
        os.mkfifo(target)
        _refused(hostile_onnx.external_data_model(tmp_path, "w.bin"), "FIFO", "not a regular file")
    else:
        target.mkdir()
        _refused(hostile_onnx.external_data_model(tmp_path, "w.bin"), "a folder", "not a regular file")


def test_model_file_itself_must_be_a_regular_file(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.onnx")
    _refused(tmp_path / "zero.onnx", "character device", "not a regular file")


def test_truncated_external_data_cannot_crash_a_running_session(tmp_path):
    """``cp new.bin model.bin`` under a running session: the data was read at load, so nothing maps the file.

    Run in a child: before the fix the child dies of SIGBUS, which must not take pytest with it.
    """
    path = hostile_onnx.honest_external_model(tmp_path)
    script = (
        "import numpy as np, sys\n"
        "from deploykit.onnx.sessions import onnx_session\n"
        f"s = onnx_session({str(path)!r})\n"
        f"open({str(tmp_path / 'model.bin')!r}, 'wb').close()\n"  # truncated in place
        "y = s.run(None, {'input': np.ones((1, 4), np.float32)})[0]\n"
        "print(float(y.sum()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == pytest.approx(float((np.ones((1, 4)) @ hostile_onnx.WEIGHTS).sum()), rel=1e-5)


def _peak_mb_after(fn) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def test_wide_declared_input_is_refused_before_allocating(tmp_path):
    path = hostile_onnx.wide_input_model(tmp_path)
    assert path.stat().st_size < 400
    grew = _peak_mb_after(lambda: _refused(path, "input 'input' (per row)", "DEPLOYKIT_MAX_TENSOR_BYTES"))
    assert grew < 200


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand"])
def test_constant_shape_bomb_is_refused_before_allocating(tmp_path, op):
    path = hostile_onnx.constant_of_shape_model(tmp_path, op)
    assert path.stat().st_size < 4000
    grew = _peak_mb_after(lambda: _refused(path, f"{op} node", "[500000000]", "DEPLOYKIT_MAX_TENSOR_BYTES"))
    assert grew < 200


def test_small_constant_shapes_still_load(tmp_path):
    path = hostile_onnx.constant_of_shape_model(tmp_path, "ConstantOfShape", elements=1000)
    session = onnx_session(path)
    assert session.run(None, {"input": np.zeros((1, 4), np.float32)})[0].tolist() == [[1000.0] * 4]


def test_export_and_ensemble_read_onnx_sources_through_the_same_checks(served):
    """``deploykit export model.onnx`` and ensemble members are read with deploykit's checks, not onnx.load's."""
    from deploykit.export.onnx_export import quantize_onnx_file
    from deploykit.uncertainty.ensemble import _load

    path = hostile_onnx.external_data_model(served, "../secret.bin")
    with pytest.raises(ModelLoadError, match="leads out of the model's folder"):
        _load(path)
    with pytest.raises(ModelLoadError, match="leads out of the model's folder"):
        quantize_onnx_file(path, served / "q.onnx", "int8-dynamic")
    assert not (served / "q.onnx").exists()
