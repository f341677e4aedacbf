"""Decompression and declared-size bombs (issue 13 item 6): refused before anything is inflated or allocated."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from deploykit.cli.main import main
from deploykit.data.dataset import load_dataset
from deploykit.errors import ConfigError, DataError
from tests.security import hostile

#: Python-level allocations allowed while a bomb is refused (numpy reports its buffers to tracemalloc).
PEAK_BYTES = 32 << 20


def _refused_cheaply(path, *needles):
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = str(info.value)
    assert str(path) in text and "DEPLOYKIT_MAX_DATA_BYTES" in text and "\n" not in text, text
    for needle in needles:
        assert needle in text, text
    assert peak < PEAK_BYTES, f"{peak} bytes allocated while refusing"
    return text


def test_npz_bomb(tmp_path):
    path = hostile.npz_bomb(tmp_path)
    assert path.stat().st_size < 2 << 20
    _refused_cheaply(path, "the .npz (its array headers) declares 4,882.8 MiB")


def test_idx_bomb(tmp_path):
    path = hostile.idx_bomb(tmp_path)
    _refused_cheaply(path, "the IDX header (20000000x28x28) declares")
    _refused_cheaply(tmp_path, "the IDX header")  # the folder form reads the same file


def test_gzipped_idx_bomb_is_refused_from_its_header(tmp_path):
    import gzip

    hostile.idx_bomb(tmp_path)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).unlink()
        with gzip.open(tmp_path / f"{name}.gz", "wb") as fh:
            fh.write(raw)
    _refused_cheaply(tmp_path / "train-images-idx3-ubyte.gz", "the IDX header")


def test_csv_bomb(tmp_path):
    path = hostile.csv_bomb(tmp_path)
    _refused_cheaply(path, "the CSV (150 rows x 2000000 columns)")


def test_the_limit_is_overridable_and_checked(tmp_path, monkeypatch):
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "small.npz", x=x, y=np.arange(60) % 3)
    assert load_dataset(tmp_path / "small.npz").num_features == 4
    monkeypatch.setenv("DEPLOYKIT_MAX_DATA_BYTES", "1000")  # 60 x 4 x 4 + 60 x 8 bytes declared
    with pytest.raises(DataError, match="declares 1,440 bytes, over the 1,000 bytes limit"):
        load_dataset(tmp_path / "small.npz")
    monkeypatch.setenv("DEPLOYKIT_MAX_DATA_BYTES", "lots")
    with pytest.raises(ConfigError, match="DEPLOYKIT_MAX_DATA_BYTES must be a positive number of bytes"):
        load_dataset(tmp_path / "small.npz")


@pytest.mark.parametrize("command", ["export", "prune"])
def test_bombs_through_the_cli_exit_1(tmp_path, capsys, command):
    from deploykit.cli.common import DEFAULT_MODEL

    path = hostile.npz_bomb(tmp_path)
    out = tmp_path / ("out" if command == "export" else "out.keras")
    code = main([command, str(DEFAULT_MODEL), "--data", str(path), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[")]
    assert code == 1 and len(err) == 1 and str(path) in err[0] and "DEPLOYKIT_MAX_DATA_BYTES" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.npz"]
