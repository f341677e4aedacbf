"""``--out`` edge cases (issue 26 item 9): refused before any work, with one line, and the input never deleted.

Run through the real CLI (``deploykit export`` of an ONNX file, the quickest command with an ``--out`` folder).
"""

from __future__ import annotations

import os
import time

import pytest

from deploykit.cli.main import main
from tests.security import hostile_onnx


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    return hostile_onnx.honest_external_model(folder)


def _refused(capfd, argv, needle) -> None:
    t0 = time.monotonic()
    code = main(argv)
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip() and not line.startswith("[")]
    assert code == 2, err
    assert len(err) == 1 and needle in err[0], err
    assert time.monotonic() - t0 < 5  # before any work


def _export(model, out, *extra):
    return ["export", str(model), "--data", "digits", "--out", str(out), *extra]


def test_out_holding_the_input_model_is_refused_even_with_force(model, capfd):
    before = model.read_bytes()
    _refused(capfd, _export(model, model.parent, "--force"), "an input of this run")
    _refused(capfd, _export(model, model.parent.parent, "--force"), "an input of this run")
    assert model.read_bytes() == before and (model.parent / "model.bin").exists()


def test_out_that_is_a_symlink_is_refused(model, tmp_path, capfd):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    _refused(capfd, _export(model, tmp_path / "link"), "is a symlink")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    _refused(capfd, _export(model, tmp_path / "dangling", "--force"), "is a symlink")
    assert os.path.islink(tmp_path / "dangling") and not (tmp_path / "nowhere").exists()


def test_out_dot_or_the_working_directory_is_refused(model, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(capfd, _export(model, ".", "--force"), "must name a folder")
    _refused(capfd, _export(model, "..", "--force"), "must name a folder")
    _refused(capfd, _export(model, tmp_path.parent, "--force"), "holds the working directory")


def test_out_name_too_long_to_stage_is_refused(model, tmp_path, capfd):
    _refused(capfd, _export(model, tmp_path / ("o" * 245)), "too long")
