"""One rule for errors (issue 13 item 10): one line, a DataError (exit 1) naming the file for a data / model
mismatch."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from deploykit.cli.common import DEFAULT_MODEL, run_handler
from deploykit.cli.main import main


@pytest.fixture
def twenty_classes(tmp_path):
    """64 features like the shipped digits model, but 20 classes for its 10 outputs."""
    rng = np.random.default_rng(0)
    path = tmp_path / "twenty.npz"
    np.savez(path, x=rng.normal(size=(200, 64)).astype(np.float32), y=np.arange(200) % 20)
    return path


@pytest.mark.parametrize(
    "command, out", [("export", "out"), ("mc", "out"), ("prune", "out.keras"), ("optimize", "out")]
)
def test_more_classes_than_outputs_is_the_same_error_everywhere(tmp_path, capsys, twenty_classes, command, out):
    code = main([command, str(DEFAULT_MODEL), "--data", str(twenty_classes), "--out", str(tmp_path / out)])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[")]
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"deploykit {command}: error: data 'twenty.npz' has 20 classes, but model ") and err[
        0
    ].endswith(" outputs 10"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twenty.npz"]


def _run(exc: BaseException, capsys) -> tuple[int, str]:
    def handler(args):
        raise exc

    code = run_handler(argparse.Namespace(handler=handler, command="fold", verbose=False))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "exc, code, text",
    [
        (MemoryError(), 1, "deploykit fold: error: out of memory (MemoryError); the model or data is too large"),
        (
            ValueError("first line\n  second line"),
            1,
            "deploykit fold: error: ValueError: first line second line (run with --verbose",
        ),
        (RuntimeError(), 1, "deploykit fold: error: RuntimeError (run with --verbose"),
    ],
)
def test_unexpected_errors_are_one_non_empty_line(capsys, exc, code, text):
    got, err = _run(exc, capsys)
    assert got == code and err.startswith(text) and err.count("\n") == 1, err


def test_deploykit_errors_keep_their_exit_code_on_one_line(capsys):
    from deploykit.errors import DataError, UsageError

    assert _run(DataError("data x.npz:\nbad"), capsys) == (1, "deploykit fold: error: data x.npz: bad\n")
    assert _run(UsageError("--out: bad"), capsys) == (2, "deploykit fold: error: --out: bad\n")
    assert _run(DataError(), capsys) == (1, "deploykit fold: error: DataError\n")
