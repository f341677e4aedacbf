"""``deploykit train`` and ``deploykit lr-find``, run in-process: help, tiny runs, exit codes 2 and 1."""

from __future__ import annotations

import json

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "error" in line.lower()]


def test_help_lists_the_options(cli):
    proc = cli("train", "--help")
    assert proc.returncode == 0
    for option in ("--preset", "--hidden", "--dropout-layers", "--batchnorm", "--optimizer", "--lr", "--l2", "--out"):
        assert option in proc.stdout
    proc = cli("lr-find", "--help")
    assert proc.returncode == 0 and "--plot" in proc.stdout and "--steps" in proc.stdout


@pytest.mark.slow
def test_tiny_training_run(tmp_path, cli):
    out = tmp_path / "run"
    proc = cli("train", "--hidden", "16", "--dropout", "0.1", "--epochs", "3", "--lr", "0.01", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    assert "epoch 3/3" in proc.stderr  # progress, one line per epoch
    assert (out / "model.keras").stat().st_size > 0
    assert (out / "learning_curve.png").read_bytes()[:8] == PNG
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["hidden"] == [16] and record["learning_rate"] == 0.01
    # the same folder again: refused (usage error, exit 2), unless --force
    proc = cli("train", "--hidden", "4", "--epochs", "1", "--lr", "0.01", "--out", str(out))
    assert proc.returncode == 2 and "--force" in proc.stderr


@pytest.mark.slow
def test_lr_find_writes_the_plot_and_prints_the_rate(tmp_path, cli):
    plot = tmp_path / "lr.png"
    proc = cli("lr-find", "--hidden", "16", "--steps", "60", "--max-rate", "100", "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    assert "picked max learning rate" in proc.stdout
    assert plot.read_bytes()[:8] == PNG


def test_bad_options_exit_2_with_one_line(tmp_path, cli):
    for args, word in [
        (("--preset", "relu"), "--preset"),
        (("--dropout", "1.5"), "dropout"),
        (("--hidden", "64,abc"), "hidden"),
        (("--lr", "fast"), "learning_rate"),
        (("--dropout-layers", "top0"), "dropout_layers"),
    ]:
        proc = cli("train", *args, "--out", str(tmp_path / "run"))
        assert proc.returncode == 2, (args, proc.stderr)
        assert word in proc.stderr
        assert len(_error_lines(proc)) == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_data_path_exits_1_with_one_line(tmp_path, cli):
    missing = tmp_path / "nope.npz"
    proc = cli("train", "--data", str(missing), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert proc.returncode == 1
    (line,) = _error_lines(proc)
    assert "nope.npz" in line and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
