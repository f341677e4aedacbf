"""Datasets: the embedded digits, and user data as .npz, .csv or IDX files.

Every loader returns a :class:`Dataset` with a stratified train / validation /
test split made with a fixed seed. Inputs stay raw (the model standardizes
them itself); the standardization statistics come from the training part only.
"""

from __future__ import annotations

import csv
import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploykit.errors import DataError

DEFAULT_DATASET = "digits"
DEFAULT_SEED = 42


@dataclass(frozen=True)
class SplitConfig:
    """How a dataset is split; validated on construction."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise DataError(f"{name} must be in (0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise DataError("val_fraction + test_fraction must leave at least 10% for training")


@dataclass(frozen=True)
class Dataset:
    """A classification dataset split three ways. Arrays are float32 inputs and int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    feature_mean: np.ndarray = field(init=False, repr=False)
    feature_var: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        flat = self.x_train.reshape(len(self.x_train), -1).astype(np.float64)
        object.__setattr__(self, "feature_mean", flat.mean(axis=0).astype(np.float32))
        object.__setattr__(self, "feature_var", flat.var(axis=0).astype(np.float32))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sample_train(self, n: int, seed: int = DEFAULT_SEED) -> np.ndarray:
        """Up to ``n`` training inputs drawn without replacement (e.g. for int8 calibration)."""
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self.x_train), size=min(n, len(self.x_train)), replace=False)
        return self.x_train[np.sort(idx)]

    def check_input_shape(self, shape: tuple[int | None, ...], what: str = "model") -> None:
        """Raise a DataError when the data does not fit an input shape like ``(None, 64)``."""
        want = tuple(shape[1:])
        have = self.input_shape
        if want == have or (None not in want and int(np.prod(want)) == self.num_features and len(want) == 1 and len(have) == 1):
            return
        raise DataError(f"data {self.name!r} has inputs of shape {have}, but the {what} expects {want}")

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} val / {len(self.x_test)} test, "
            f"inputs {self.input_shape}, {self.num_classes} classes"
        )


def load_dataset(
    source: str | os.PathLike | None = DEFAULT_DATASET,
    *,
    label_column: str = "label",
    split: SplitConfig | None = None,
) -> Dataset:
    """Load ``source``: ``"digits"`` (embedded), or a path to .npz, .csv or IDX data.

    An IDX source is either an images file (``*-images-idx3-ubyte[.gz]``; the
    labels file beside it is found by name) or a folder holding Fashion-MNIST /
    MNIST's files (``train-*`` and optionally ``t10k-*``).
    """
    split = split or SplitConfig()
    if source is None or str(source) == DEFAULT_DATASET:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return _split_arrays("digits", digits.data, digits.target, split, names=[str(i) for i in range(10)])
    path = Path(source)
    if not path.exists():
        raise DataError(f"data {path}: no such file or folder (or use the built-in 'digits')")
    kind = _format_of(path)
    if kind == "npz":
        return _load_npz(path, split)
    if kind == "csv":
        return _load_csv(path, label_column, split)
    return _load_idx(path, split)


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        if any("idx" in p.name for p in path.iterdir()):
            return "idx"
        raise DataError(f"data {path}: a folder must hold IDX files (e.g. train-images-idx3-ubyte.gz)")
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".csv"):
        return "csv"
    if "idx" in name or name.endswith("-ubyte") or name.endswith("-ubyte.gz"):
        return "idx"
    raise DataError(f"data {path}: unknown format {path.suffix or '(no extension)'}; use .npz, .csv or IDX files")


def _load_npz(path: Path, split: SplitConfig) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile / pickle / value errors all mean "not a valid npz"
        raise DataError(f"data {path}: not a readable .npz file ({exc})") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        x_tr, y_tr = _checked(path, arrays["x_train"], arrays["y_train"], "x_train/y_train")
        x_te, y_te = _checked(path, arrays["x_test"], arrays["y_test"], "x_test/y_test")
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise DataError(f"data {path}: x_train has inputs {x_tr.shape[1:]} but x_test has {x_te.shape[1:]}")
        if {"x_val", "y_val"} <= arrays.keys():
            x_va, y_va = _checked(path, arrays["x_val"], arrays["y_val"], "x_val/y_val")
            labels, names = _encode_labels(path, np.concatenate([y_tr, y_va, y_te]))
            a, b = len(y_tr), len(y_tr) + len(y_va)
            return Dataset(path.name, x_tr, labels[:a], x_va, labels[a:b], x_te, labels[b:], tuple(names))
        labels, names = _encode_labels(path, np.concatenate([y_tr, y_te]))
        y_tr, y_te = labels[: len(y_tr)], labels[len(y_tr) :]
        x_tr, x_va, y_tr, y_va = _stratified(path, x_tr, y_tr, split.val_fraction / (1 - split.test_fraction), split.seed)
        return Dataset(path.name, x_tr, y_tr, x_va, y_va, x_te, y_te, tuple(names))
    if {"x", "y"} <= arrays.keys():
        return _split_arrays(path.name, arrays["x"], arrays["y"], split, source=path)
    raise DataError(f"data {path}: an .npz must hold arrays x and y, or x_train, y_train, x_test and y_test; found {sorted(arrays)}")


def _load_csv(path: Path, label_column: str, split: SplitConfig) -> Dataset:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise DataError(f"data {path}: a CSV needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(f"data {path}: no label column {label_column!r} (columns: {', '.join(header[:10])}{'...' if len(header) > 10 else ''})")
    li = header.index(label_column)
    labels, feats = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"data {path}: line {lineno} has {len(row)} fields, the header has {len(header)}")
        labels.append(row[li].strip())
        try:
            feats.append([float(v) for j, v in enumerate(row) if j != li])
        except ValueError as exc:
            raise DataError(f"data {path}: line {lineno}: non-numeric feature ({exc})") from None
    return _split_arrays(path.name, np.array(feats, dtype=np.float64), np.array(labels), split, source=path)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"data {path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"data {path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise DataError(f"data {path}: IDX header promises {dims} ({expected} bytes) but the file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _labels_beside(images: Path) -> Path:
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    cand = images.with_name(name)
    if name == images.name or not cand.exists():
        raise DataError(f"data {images}: no labels file beside it (expected {cand.name})")
    return cand


def _load_idx(path: Path, split: SplitConfig) -> Dataset:
    if path.is_dir():
        files = {p.name: p for p in path.iterdir()}
        train = [p for n, p in files.items() if n.startswith("train") and "images" in n]
        test = [p for n, p in files.items() if n.startswith("t10k") and "images" in n]
        if not train:
            raise DataError(f"data {path}: no train-images-idx3-ubyte[.gz] file in the folder")
        x_tr, y_tr = _checked(path, read_idx(train[0]), read_idx(_labels_beside(train[0])), train[0].name)
        if test:
            x_te, y_te = _checked(path, read_idx(test[0]), read_idx(_labels_beside(test[0])), test[0].name)
            arrays = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}
            labels, names = _encode_labels(path, np.concatenate([y_tr, y_te]))
            y_tr, y_te = labels[: len(y_tr)], labels[len(y_tr) :]
            x_tr, x_va, y_tr, y_va = _stratified(path, arrays["x_train"], y_tr, split.val_fraction / (1 - split.test_fraction), split.seed)
            return Dataset(path.name, x_tr, y_tr, x_va, y_va, x_te, y_te, tuple(names))
        return _split_arrays(path.name, x_tr, y_tr, split, source=path)
    return _split_arrays(path.name, read_idx(path), read_idx(_labels_beside(path)), split, source=path)


def _checked(source: Path, x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        raise DataError(f"data {source}: {what}: inputs must have a feature axis, got shape {x.shape}")
    if y.ndim != 1:
        y = y.reshape(len(y), -1)
        if y.shape[1] != 1:
            raise DataError(f"data {source}: {what}: labels must be one per row, got shape {y.shape}")
        y = y[:, 0]
    if len(x) != len(y):
        raise DataError(f"data {source}: {what}: x has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise DataError(f"data {source}: {what}: no rows")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"data {source}: {what}: inputs must be numeric, got {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"data {source}: {what}: inputs hold {bad} NaN or inf values")
    return x, y


def _encode_labels(source: Path | str, y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise DataError(f"data {source}: labels hold NaN or inf values")
        if not np.all(y == np.round(y)):
            raise DataError(f"data {source}: labels must be class ids or names, got non-integer numbers")
        y = y.astype(np.int64)
    values = np.unique(y)
    if len(values) < 2:
        raise DataError(f"data {source}: labels hold fewer than two classes ({len(values)})")
    if np.issubdtype(y.dtype, np.integer) and values.min() >= 0 and values.max() < 1000:
        n = int(values.max()) + 1  # keep integer ids as they are (class 3 stays 3)
        return y.astype(np.int64), [str(i) for i in range(n)]
    index = np.searchsorted(values, y)
    return index.astype(np.int64), [str(v) for v in values]


def _stratified(source, x, y, fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(x, y, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise DataError(f"data {source}: cannot make a stratified split ({exc})") from None


def _split_arrays(name: str, x, y, split: SplitConfig, names: list[str] | None = None, source=None) -> Dataset:
    x, y = _checked(source or name, x, y, "x/y")
    labels, found = _encode_labels(source or name, y)
    x_rest, x_te, y_rest, y_te = _stratified(source or name, x, labels, split.test_fraction, split.seed)
    x_tr, x_va, y_tr, y_va = _stratified(source or name, x_rest, y_rest, split.val_fraction / (1 - split.test_fraction), split.seed)
    return Dataset(name, x_tr, y_tr, x_va, y_va, x_te, y_te, tuple(names or found))
