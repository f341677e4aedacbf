"""Inputs that are not regular files, or hold more than they declare (issue 26 items 5 and 9): refused before
reading, or read within the declared size. Every hostile file is made here (a symlink to /dev/zero, a FIFO)."""

from __future__ import annotations

import os
import resource
import threading

import numpy as np
import pytest

from deploykit.core.modelfile import read_model_file
from deploykit.data.dataset import load_dataset
from deploykit.errors import ConfigError, DataError, ModelLoadError
from deploykit.pipeline.config import OptimizeConfig
from tests.security import hostile


def _zero(path):
    os.symlink("/dev/zero", path)
    return path


def _within(seconds: float, fn):
    """``fn()``'s exception (or None) if it ends within ``seconds``; fail if it blocks (a FIFO read)."""
    box = {}

    def run():
        try:
            fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    return box.get("error")


@pytest.mark.parametrize("name", ["data.npz", "data.csv", "train-images-idx3-ubyte"])
def test_data_on_dev_zero_is_refused(tmp_path, name):
    with pytest.raises(DataError, match=r"a symlink to /dev/zero\): a character device, not a regular file"):
        load_dataset(_zero(tmp_path / name))


def test_data_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "data.csv")
    error = _within(5, lambda: load_dataset(tmp_path / "data.csv"))
    assert isinstance(error, DataError) and "a FIFO (named pipe), not a regular file" in str(error)


@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_model_on_dev_zero_is_refused(tmp_path, name):
    with pytest.raises(ModelLoadError, match="a character device, not a regular file"):
        read_model_file(_zero(tmp_path / name))


def test_config_on_dev_zero_or_a_fifo_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="config .*: a character device, not a regular file"):
        OptimizeConfig.from_toml(_zero(tmp_path / "zero.toml"))
    os.mkfifo(tmp_path / "fifo.toml")
    error = _within(5, lambda: OptimizeConfig.from_toml(tmp_path / "fifo.toml"))
    assert isinstance(error, ConfigError) and "FIFO" in str(error)


def test_config_file_size_is_bounded(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="DEPLOYKIT_MAX_CONFIG_FILE_BYTES"):
        OptimizeConfig.from_toml(big)


def test_toml_nested_5000_deep_is_one_clear_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("[fold]\nenabled = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deep"):
        OptimizeConfig.from_toml(path)


@pytest.mark.slow  # compresses 256 MiB
def test_keras_zip_that_under_declares_config_json_costs_its_declared_size(tmp_path):
    path = hostile.keras_zip_underdeclared(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with pytest.raises(ModelLoadError, match="unreadable Keras archive"):
        read_model_file(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before < 100


def _csv(tmp_path, text: str, name: str = "d.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def _rows(n: int = 40):
    rng = np.random.default_rng(0)
    return [(f"{a:.3f}", f"{b:.3f}", str(i % 2)) for i, (a, b) in enumerate(rng.normal(size=(n, 2)))]


def test_csv_with_a_utf8_bom_finds_its_label_column(tmp_path):
    text = "\ufefflabel,a,b\n" + "".join(f"{y},{a},{b}\n" for a, b, y in _rows())
    data = load_dataset(_csv(tmp_path, text))
    assert data.num_features == 2 and data.num_classes == 2


def test_csv_with_cr_only_line_ends(tmp_path):
    text = "a,b,label\r" + "".join(f"{a},{b},{y}\r" for a, b, y in _rows())
    data = load_dataset(_csv(tmp_path, text))
    assert data.num_features == 2 and len(data.x_train) + len(data.x_test) + len(getattr(data, "x_val", [])) == 40


@pytest.mark.slow  # writes and loads 128 MiB in a child
def test_loading_data_costs_a_few_times_its_size_not_seven(tmp_path):
    """A 128 MiB float32 .npz: the peak was 7x its size (a float64 copy of the training split for its
    statistics, a float32 copy of float32 inputs); now under 4.5x. Measured in a child, alone."""
    import subprocess
    import sys

    rows = (128 << 20) // (64 * 4)
    np.savez(
        tmp_path / "big.npz", x=np.random.default_rng(0).random((rows, 64), dtype=np.float32), y=np.arange(rows) % 10
    )
    script = (
        "import resource\nfrom deploykit.data.dataset import load_dataset\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"load_dataset({str(tmp_path / 'big.npz')!r})\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 4.5 * 128, done.stdout


def test_ood_data_on_dev_zero_or_declaring_terabytes_is_refused(tmp_path):
    from deploykit.uncertainty.ood import load_ood

    with pytest.raises(DataError, match="a character device, not a regular file"):
        load_ood(_zero(tmp_path / "ood.npy"))
    bomb = tmp_path / "bomb.npy"
    with open(bomb, "wb") as fh:  # a header declaring 10^12 float32 values, and nothing after it
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with pytest.raises(DataError, match="DEPLOYKIT_MAX_DATA_BYTES"):
        load_ood(bomb)
    np.save(tmp_path / "fine.npy", np.ones((3, 4), np.float32))
    assert load_ood(tmp_path / "fine.npy").shape == (3, 4)


def test_saved_model_metadata_on_dev_zero_is_refused(tmp_path):
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    _zero(folder / "keras_metadata.pb")
    error = _within(10, lambda: read_model_file(folder))
    assert isinstance(error, ModelLoadError) and "a character device, not a regular file" in str(error)
