"""Size limits: what a model file declares may grow with what it really holds on disk, never with what it only
declares (a real VGG16 loads as saved; a deflated bomb is refused)."""

import zipfile

import pytest

from deploykit.errors import ModelLoadError
from deploykit.limits import _MIB, Limit

SMALL = Limit("DEPLOYKIT_TEST_LIMIT", 1 * _MIB, "model", ModelLoadError, 32, 64 * _MIB)


def test_the_limit_grows_with_the_bytes_on_disk_up_to_the_cap(monkeypatch):
    monkeypatch.delenv(SMALL.env, raising=False)
    assert SMALL.value() == 1 * _MIB
    assert SMALL.value(on_disk=10_000) == 1 * _MIB  # a small file keeps the default
    assert SMALL.value(on_disk=1 * _MIB) == 32 * _MIB
    assert SMALL.value(on_disk=10 * _MIB) == 64 * _MIB  # the cap
    monkeypatch.setenv(SMALL.env, str(2 * _MIB))  # the variable is the limit, whatever the size on disk
    assert SMALL.value(on_disk=10 * _MIB) == 2 * _MIB


def _with_weights(tmp_path, name: str, extra: bytes):
    """A real Keras model file whose weights member carries ``extra`` bytes (deflated)."""
    from deploykit.backend import keras
    from deploykit.io.models import save_model

    save_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), tmp_path / "m.keras")
    path = tmp_path / name
    with zipfile.ZipFile(tmp_path / "m.keras") as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data + extra if info.filename == "model.weights.h5" else data)
    return path


def test_a_file_holding_its_weights_loads_past_the_default_and_a_bomb_does_not(tmp_path, monkeypatch):
    """2 MiB of incompressible bytes are held on disk: allowed past a 1 MiB default. 4 MiB of zeros deflate to
    kilobytes: the same declared size is refused, naming the variable."""
    import numpy as np

    import deploykit.core.modelfile as modelfile
    from deploykit.io.models import load_model

    monkeypatch.setattr(modelfile, "MODEL_BYTES", SMALL)
    honest = _with_weights(tmp_path, "honest.keras", np.random.default_rng(0).bytes(2 * _MIB))
    bomb = _with_weights(tmp_path, "bomb.keras", bytes(4 * _MIB))
    assert honest.stat().st_size > 2 * _MIB and bomb.stat().st_size < 64 * 1024
    assert load_model(honest) is not None
    with pytest.raises(ModelLoadError, match=r"declares 4\.0 MiB, over the 1\.0 MiB limit.*DEPLOYKIT_TEST_LIMIT"):
        load_model(bomb)
