"""Raw readers of the data files :mod:`deploykit.data.dataset` loads: IDX files, CSV rows, and the sizes an
.npz declares.

Each checks what it reads (a size against :data:`deploykit.limits.DATA_BYTES` before reading it, a malformed line
named with its number) and raises a DataError; none splits or labels anything (that is :mod:`deploykit.data.dataset`).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from deploykit.errors import DataError
from deploykit.files import regular_file
from deploykit.limits import DATA_BYTES


def _npz_declared_bytes(path: Path) -> int:
    """What the .npz's members declare (array headers read, nothing inflated), counted as float32 values."""
    total = 0
    for stored, header in npz_headers(path).values():
        total += stored if header is None else int(np.prod(header[0], dtype=object)) * max(header[1].itemsize, 4)
    return total


def npz_headers(path: Path) -> dict[str, tuple[int, tuple[tuple, np.dtype] | None]]:
    """Each .npz member (by array name) -> (its stored size, its .npy header's (shape, dtype) or None for a member
    that is not a .npy array), read from the headers alone: nothing inflated."""
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as fh:
                    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    out[name] = (info.file_size, _npy_header(fh))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as exc:
        raise DataError(f"data {path}: not a readable .npz file ({exc})") from None
    return out


def _npy_declared_bytes(fh, stored: int) -> int:
    """Bytes one member becomes: its .npy header's shape (float32 or wider per value), else its stored size."""
    header = _npy_header(fh)
    return stored if header is None else int(np.prod(header[0], dtype=object)) * max(header[1].itemsize, 4)


def _npy_header(fh) -> tuple[tuple, np.dtype] | None:
    """The (shape, dtype) a .npy member's header declares; None when it is no .npy array (np.load hands such a
    member over as raw bytes)."""
    if fh.read(6) != b"\x93NUMPY":
        return None
    version = tuple(fh.read(2))
    fh.seek(0)
    np.lib.format.read_magic(fh)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, _, dtype = readers[version](fh)
    return tuple(shape), dtype


def _count_lines(path: Path) -> tuple[int, int]:
    """Lines in a file and fields in its first line, counted in binary chunks without holding it.

    Upper bounds of the CSV's rows and columns (a quoted field may hold commas or newlines).
    """
    newlines = returns = 0
    columns, last = 1, b"\n"
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            if newlines == returns == 0:
                columns += chunk.replace(b"\r", b"\n").split(b"\n", 1)[0].count(b",")
            newlines += chunk.count(b"\n")
            returns += chunk.count(b"\r")  # CR-only line ends (classic Mac exports)
            last = chunk[-1:]
    return max(newlines, returns) + (last not in (b"\n", b"\r")), columns


def _check_csv_header(path: Path, header: list[str], columns: list[str], lines: int) -> None:
    if lines < 2 or not header:
        raise DataError(f"data {path}: a CSV needs a header row and at least one data row")
    for column in columns:
        if column not in header:
            raise DataError(
                f"data {path}: no label column {column!r} "
                f"(columns: {', '.join(header[:10])}{'...' if len(header) > 10 else ''})"
            )
    if len(header) <= len(columns):
        raise DataError(f"data {path}: no feature columns besides the label column(s) {', '.join(columns)}")


def _csv_rows(
    path: Path, reader, header: list[str], li: list[int], max_rows: int
) -> tuple[list[list[str]], np.ndarray]:
    """The labels (one list per row: one value per label column) and the float32 features of the CSV's data rows."""
    feats = np.empty((max_rows, len(header) - len(li)), dtype=np.float32)
    labels = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"data {path}: line {lineno} has {len(row)} fields, the header has {len(header)}")
        label = [row[i].strip() for i in li]
        empty = [header[i] for i, v in zip(li, label) if not v]
        if empty:
            raise DataError(f"data {path}: line {lineno} has an empty {empty[0]!r}")
        try:
            feats[len(labels)] = [float(v) for j, v in enumerate(row) if j not in li]
        except ValueError as exc:
            raise DataError(f"data {path}: line {lineno}: non-numeric feature ({exc})") from None
        labels.append(label)
    return labels, feats[: len(labels)]


def _numeric_if_possible(labels: list[list[str]]) -> np.ndarray:
    """CSV labels as numbers when they all are (so "10" sorts after "9"), else as strings; [N], or [N, K] for K
    columns."""
    try:
        y = np.array([[float(v) for v in row] for row in labels])
    except ValueError:
        y = np.array(labels)
    return y[:, 0] if y.shape[1] == 1 else y


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array; the size its header declares is checked first."""
    path = Path(path)
    regular_file(path, "data", DataError)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            dims, dtype = _idx_header(path, fh)
            expected = math.prod(dims) * dtype.itemsize
            DATA_BYTES.check(
                path, math.prod(dims) * max(dtype.itemsize, 4), f"the IDX header ({'x'.join(map(str, dims))})"
            )
            body = fh.read(expected + 1)  # one byte more tells a file longer than its header says
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"data {path}: cannot read IDX file ({exc})") from None
    if len(body) != expected:
        raise DataError(
            f"data {path}: IDX header promises {dims} ({expected} bytes) "
            f"but the file holds {len(body)}{'+' if len(body) > expected else ''} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _idx_header(path: Path, fh) -> tuple[tuple[int, ...], np.dtype]:
    """The dimensions and value type an IDX header declares."""
    magic = fh.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise DataError(f"data {path}: not an IDX file (bad magic number)")
    ndim = magic[3]
    raw = fh.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"data {path}: IDX header is cut short ({4 + len(raw)} bytes for {ndim} dimensions)")
    return struct.unpack(f">{ndim}I", raw), np.dtype(_IDX_DTYPES[magic[2]])


def _labels_beside(images: Path) -> Path:
    """The labels file of an IDX images file, gzipped or not (``*-images-idx3-*`` -> ``*-labels-idx1-*``)."""
    if "labels" in images.name:
        raise DataError(
            f"data {images}: a labels file; pass the images file (e.g. train-images-idx3-ubyte.gz) or the folder"
        )
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    if name == images.name:
        raise DataError(f"data {images}: cannot find its labels file; name IDX files like train-images-idx3-ubyte[.gz]")
    base = name.removesuffix(".gz")
    for cand in (images.with_name(base), images.with_name(base + ".gz")):
        if cand.exists():
            return cand
    raise DataError(f"data {images}: no labels file beside it (expected {name})")
