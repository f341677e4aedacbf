"""Datasets: the embedded digits, and user data as .npz, .csv or IDX files.

Every loader returns a :class:`Dataset` with a stratified train / validation /
test split made with a fixed seed. Inputs stay raw (the model standardizes
them itself); the standardization statistics come from the training part only.
What a file declares (.npz array headers, IDX dimensions, CSV rows x columns)
is checked against :data:`deploykit.limits.DATA_BYTES` before anything is
inflated or allocated: a small compressed file can declare gigabytes.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploykit.configs import Config, integer, names as name_list, number
from deploykit.errors import ConfigError, DataError
from deploykit.limits import DATA_BYTES
from deploykit.task import Task

DEFAULT_DATASET = "digits"
DEFAULT_SEED = 42
#: Integer labels with more distinct values than this, and fewer than REGRESSION_ROWS_PER_VALUE rows per value
#: on average (or a value of one row), are taken for a regression target (digits: 10 values over 1797 rows;
#: CIFAR-100: 100 over 60000).
REGRESSION_MIN_VALUES = 50
REGRESSION_ROWS_PER_VALUE = 5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitConfig(Config):
    """How a dataset is split; validated on construction (a bad value is a ConfigError)."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            number(name, getattr(self, name), 0.0, 1.0, open_low=True, open_high=True)
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("val_fraction + test_fraction must leave at least 10% for training")
        integer("seed", self.seed, 0)


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
    task: Task = Task.CLASSIFICATION  # REGRESSION: y_* are float32 targets [N] or [N, K], class_names is empty
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

    @property
    def num_outputs(self) -> int:
        """The model output width the data asks for: classes, or regression targets."""
        if self.task is Task.REGRESSION:
            return 1 if self.y_train.ndim == 1 else int(self.y_train.shape[1])
        return self.num_classes

    def sample_train(self, n: int, seed: int = DEFAULT_SEED) -> np.ndarray:
        """Up to ``n`` training inputs drawn without replacement (e.g. for int8 calibration)."""
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self.x_train), size=min(n, len(self.x_train)), replace=False)
        return self.x_train[np.sort(idx)]

    def check_input_shape(self, shape: tuple[int | None, ...], what: str = "model") -> None:
        """Raise a DataError when the data does not fit an input shape like ``(None, 64)``."""
        want = tuple(shape[1:])
        have = self.input_shape
        if len(want) == len(have) and all(w is None or w == h for w, h in zip(want, have)):
            return
        raise DataError(f"data {self.name!r} has inputs of shape {have}, but the {what} expects {want}")

    def check_model(self, model, what: str = "") -> None:
        """Raise a DataError when the data does not fit ``model``: its input shape, or its number of outputs.

        The one check every step runs before working, so a data / model mismatch is
        the same error (DataError, exit 1, naming the data) whichever command meets it.
        """
        what = what or f"model {model.name!r}"
        self.check_input_shape(model.input_shape, what=what)
        outputs = model.output_shape[-1]
        if isinstance(outputs, int) and outputs != self.num_classes:
            raise DataError(f"data {self.name!r} has {self.num_classes} classes, but {what} outputs {outputs}")

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
    class_names: Sequence[str] | str | None = None,
) -> Dataset:
    """Load ``source``: ``"digits"`` (embedded), or a path to .npz, .csv or IDX data.

    An IDX source is either an images file (``*-images-idx3-ubyte[.gz]``; the
    labels file beside it is found by name) or a folder holding Fashion-MNIST /
    MNIST's files (``train-*`` and optionally ``t10k-*``).

    ``class_names`` (a list, or one comma-separated string) fixes the classes'
    order: integer labels are ids into it, string labels are mapped by it. An
    .npz may hold the same as an array ``class_names``. Without either, string
    labels are numbered in sorted order (with a warning, as a model trained with
    another order would then get wrong names in its exported metadata).
    """
    split = split or SplitConfig()
    given = None if class_names is None else check_class_names("class_names", class_names)
    if source is None or str(source) == DEFAULT_DATASET:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return _split_arrays("digits", digits.data, digits.target, split, names=given or [str(i) for i in range(10)])
    path = Path(source)
    if not path.exists():
        raise DataError(f"data {path}: no such file or folder (or use the built-in 'digits')")
    kind = _format_of(path)
    if kind == "npz":
        return _load_npz(path, split, given)
    if kind == "csv":
        return _load_csv(path, label_column, split, given)
    return _load_idx(path, split, given)


def check_class_names(where: str, value: Sequence[str] | str) -> tuple[str, ...]:
    """Class names (a list, or one comma-separated string) as a tuple; a ConfigError when fewer than two or repeated.

    Each name labels one model output, so a repeat or a lone name is a mistake, not a choice.
    """
    names = name_list(where, value, split=True)
    if len(names) < 2:
        raise ConfigError(f"{where}: a classifier needs at least two class names, got {list(names)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: class names must be distinct; repeated: {', '.join(repeated)}")
    return names


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


def _load_npz(path: Path, split: SplitConfig, given: tuple[str, ...] | None) -> Dataset:
    DATA_BYTES.check(path, _npz_declared_bytes(path), "the .npz (its array headers)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile / pickle / value errors all mean "not a valid npz"
        raise DataError(f"data {path}: not a readable .npz file ({exc})") from None
    names = _npz_class_names(path, arrays.get("class_names"), given)
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        val = (arrays["x_val"], arrays["y_val"]) if {"x_val", "y_val"} <= arrays.keys() else None
        return _given_test(path, (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]), split, val, names)
    if {"x", "y"} <= arrays.keys():
        return _split_arrays(path.name, arrays["x"], arrays["y"], split, names=names, source=path)
    raise DataError(f"data {path}: an .npz must hold arrays x and y, or x_train, y_train, x_test and y_test; found {sorted(arrays)}")


def _npz_class_names(path: Path, stored, given: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The .npz's ``class_names`` array (strings), checked; class names given as well must agree with it."""
    if stored is None:
        return given
    if stored.ndim != 1 or stored.dtype.kind != "U":
        raise DataError(f"data {path}: class_names must be a 1-D array of strings, got {stored.dtype} of shape {stored.shape}")
    try:
        names = check_class_names(f"data {path}: class_names", [str(n) for n in stored])
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    if given is not None and given != names:
        raise DataError(f"data {path}: holds class_names {list(names)}, but {list(given)} were given; give none or the same")
    return names


def _npz_declared_bytes(path: Path) -> int:
    """What the .npz's members declare (array headers read, nothing inflated), counted as float32 values."""
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as fh:
                    total += _npy_declared_bytes(fh, info.file_size)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as exc:
        raise DataError(f"data {path}: not a readable .npz file ({exc})") from None
    return total


def _npy_declared_bytes(fh, stored: int) -> int:
    """Bytes one member becomes: its .npy header's shape (float32 or wider per value), else its stored size."""
    if fh.read(6) != b"\x93NUMPY":
        return stored  # np.load hands a non-.npy member over as raw bytes
    version = tuple(fh.read(2))
    fh.seek(0)
    np.lib.format.read_magic(fh)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, _, dtype = readers[version](fh)
    return int(np.prod(shape, dtype=object)) * max(dtype.itemsize, 4)


def _load_csv(path: Path, label_column: str, split: SplitConfig, given: tuple[str, ...] | None) -> Dataset:
    """Read a CSV row by row into a preallocated array, its size checked from the line count first."""
    try:
        lines, columns = _count_lines(path)
        DATA_BYTES.check(path, max(lines - 1, 1) * columns * 4, f"the CSV ({lines - 1} rows x {columns} columns)")
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            _check_csv_header(path, header, label_column, lines)
            labels, feats = _csv_rows(path, reader, header, header.index(label_column), lines - 1)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"data {path}: not a readable CSV text file ({exc})") from None
    if not labels:
        raise DataError(f"data {path}: a CSV needs a header row and at least one data row")
    return _split_arrays(path.name, feats, _numeric_if_possible(labels), split, names=given, source=path)


def _count_lines(path: Path) -> tuple[int, int]:
    """Lines in a file and fields in its first line, counted in binary chunks without holding it.

    Upper bounds of the CSV's rows and columns (a quoted field may hold commas or newlines).
    """
    lines, columns, last = 0, 1, b"\n"
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            if lines == 0:
                columns += chunk.split(b"\n", 1)[0].count(b",")
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n"), columns


def _check_csv_header(path: Path, header: list[str], label_column: str, lines: int) -> None:
    if lines < 2 or not header:
        raise DataError(f"data {path}: a CSV needs a header row and at least one data row")
    if label_column not in header:
        raise DataError(f"data {path}: no label column {label_column!r} (columns: {', '.join(header[:10])}{'...' if len(header) > 10 else ''})")
    if len(header) < 2:
        raise DataError(f"data {path}: no feature columns besides the label column {label_column!r}")


def _csv_rows(path: Path, reader, header: list[str], li: int, max_rows: int) -> tuple[list[str], np.ndarray]:
    """The labels and the float32 features of the CSV's data rows (blank lines skipped)."""
    feats = np.empty((max_rows, len(header) - 1), dtype=np.float32)
    labels = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"data {path}: line {lineno} has {len(row)} fields, the header has {len(header)}")
        label = row[li].strip()
        if not label:
            raise DataError(f"data {path}: line {lineno} has an empty {header[li]!r}")
        try:
            feats[len(labels)] = [float(v) for j, v in enumerate(row) if j != li]
        except ValueError as exc:
            raise DataError(f"data {path}: line {lineno}: non-numeric feature ({exc})") from None
        labels.append(label)
    return labels, feats[: len(labels)]


def _numeric_if_possible(labels: list[str]) -> np.ndarray:
    """CSV labels as numbers when they all are (so "10" sorts after "9"), else as strings."""
    try:
        return np.array([float(v) for v in labels])
    except ValueError:
        return np.array(labels)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array; the size its header declares is checked first."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            dims, dtype = _idx_header(path, fh)
            expected = math.prod(dims) * dtype.itemsize
            DATA_BYTES.check(path, math.prod(dims) * max(dtype.itemsize, 4), f"the IDX header ({'x'.join(map(str, dims))})")
            body = fh.read(expected + 1)  # one byte more tells a file longer than its header says
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"data {path}: cannot read IDX file ({exc})") from None
    if len(body) != expected:
        raise DataError(f"data {path}: IDX header promises {dims} ({expected} bytes) but the file holds {len(body)}{'+' if len(body) > expected else ''} bytes")
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
        raise DataError(f"data {images}: a labels file; pass the images file (e.g. train-images-idx3-ubyte.gz) or the folder")
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    if name == images.name:
        raise DataError(f"data {images}: cannot find its labels file; name IDX files like train-images-idx3-ubyte[.gz]")
    base = name.removesuffix(".gz")
    for cand in (images.with_name(base), images.with_name(base + ".gz")):
        if cand.exists():
            return cand
    raise DataError(f"data {images}: no labels file beside it (expected {name})")


def _load_idx(path: Path, split: SplitConfig, given: tuple[str, ...] | None) -> Dataset:
    if not path.is_dir():
        return _split_arrays(path.name, read_idx(path), read_idx(_labels_beside(path)), split, names=given, source=path)
    names = sorted(p.name for p in path.iterdir())
    train = [n for n in names if n.startswith("train") and "images" in n]
    test = [n for n in names if n.startswith("t10k") and "images" in n]
    if not train:
        raise DataError(f"data {path}: no train-images-idx3-ubyte[.gz] file in the folder")
    train_xy = (read_idx(path / train[0]), read_idx(_labels_beside(path / train[0])))
    if not test:
        return _split_arrays(path.name, *train_xy, split, names=given, source=path)
    test_xy = (read_idx(path / test[0]), read_idx(_labels_beside(path / test[0])))
    return _given_test(path, train_xy, test_xy, split, names=given)


def _given_test(path: Path, train, test, split: SplitConfig, val=None, names=None) -> Dataset:
    """A dataset whose test part (and maybe validation part) the source fixes; validation comes from train."""
    parts = {"train": _checked(path, *train, "train"), "test": _checked(path, *test, "test")}
    if val is not None:
        parts["val"] = _checked(path, *val, "val")
    for name, (x, _) in parts.items():
        if x.shape[1:] != parts["train"][0].shape[1:]:
            raise DataError(f"data {path}: train inputs have shape {parts['train'][0].shape[1:]} but {name} inputs {x.shape[1:]}")
    labels, names = _encode_labels(path, np.concatenate([y for _, y in parts.values()]), names)
    bounds = np.cumsum([len(y) for _, y in parts.values()])[:-1]
    encoded = dict(zip(parts, np.split(labels, bounds)))
    x_tr, x_te = parts["train"][0], parts["test"][0]
    if val is not None:
        x_va, y_tr, y_va = parts["val"][0], encoded["train"], encoded["val"]
    else:
        x_tr, x_va, y_tr, y_va = _stratified(path, x_tr, encoded["train"], split.val_fraction / (1 - split.test_fraction), split.seed)
    return Dataset(path.name, x_tr, y_tr, x_va, y_va, x_te, encoded["test"], tuple(names))


def _checked(source: Path, x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        raise DataError(f"data {source}: {what}: inputs must have a feature axis, got shape {x.shape}")
    if y.ndim != 1:
        y = y.reshape(len(y), -1) if y.ndim else y.reshape(1, 1)
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


def _encode_labels(source: Path | str, y: np.ndarray, names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Labels as class ids 0..C-1, and the class names.

    With ``names``, integer labels are ids into them and string labels are
    mapped by them. Without, integer labels that already are 0..C-1 keep their
    ids (class 3 stays 3); any other labels (strings, gaps, negative ids) are
    numbered in sorted order and named by their value.
    """
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise DataError(f"data {source}: labels hold NaN or inf values")
        if not np.all(y == np.round(y)):
            raise DataError(f"data {source}: labels must be class ids or names, got non-integer numbers")
        y = y.astype(np.int64)
    if names is not None:
        return _named_labels(source, y, list(names)), list(names)
    values = np.unique(y)
    if len(values) < 2:
        raise DataError(f"data {source}: labels hold fewer than two classes ({len(values)})")
    if np.issubdtype(y.dtype, np.integer):
        _refuse_regression(source, y, len(values))
        if values[0] == 0 and values[-1] == len(values) - 1:
            return y.astype(np.int64), [str(i) for i in range(len(values))]
    elif y.dtype.kind in "USO":
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        log.warning("data %s: string labels numbered in sorted order (%s); if the model was trained with another "
                    "order, give it (--class-names a,b,c, class_names=, or a class_names array in the .npz)", source, shown)
    index = np.searchsorted(values, y)
    return index.astype(np.int64), [str(v) for v in values]


def _named_labels(source, y: np.ndarray, names: list[str]) -> np.ndarray:
    """Labels as ids into ``names``: integers must be ids already, strings must be names; else a DataError naming one."""
    if np.issubdtype(y.dtype, np.integer):
        bad = y[(y < 0) | (y >= len(names))]
        if len(bad):
            raise DataError(f"data {source}: label {bad[0]} is not a class id: class_names holds {len(names)} names (ids 0..{len(names) - 1})")
        return y.astype(np.int64)
    index = {n: i for i, n in enumerate(names)}
    missing = sorted({str(v) for v in np.unique(y)} - index.keys())
    if missing:
        raise DataError(f"data {source}: label {missing[0]!r} is not in class_names ({', '.join(names)})"
                        + (f"; {len(missing) - 1} more labels missing" if len(missing) > 1 else ""))
    return np.array([index[str(v)] for v in y], dtype=np.int64)


def _refuse_regression(source, y: np.ndarray, values: int) -> None:
    """A DataError when integer labels look like a regression target, before the stratified split fails on them.

    Many values (more than REGRESSION_MIN_VALUES) and either few rows per value on
    average, or a value held by one row only (which no stratified split can place):
    a many-class dataset with rows enough for every class still loads.
    """
    if values <= REGRESSION_MIN_VALUES:
        return
    if len(y) < REGRESSION_ROWS_PER_VALUE * values or np.unique(y, return_counts=True)[1].min() < 2:
        raise DataError(f"data {source}: labels look like a regression target ({values} distinct values over {len(y)} rows); "
                        "deploykit handles classifiers today (regression support is tracked in issue 12)")


def _stratified(source, x, y, fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(x, y, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise DataError(f"data {source}: cannot make a stratified split ({exc})") from None


def _split_arrays(name: str, x, y, split: SplitConfig, names: list[str] | None = None, source=None) -> Dataset:
    x, y = _checked(source or name, x, y, "x/y")
    labels, found = _encode_labels(source or name, y, names)
    x_rest, x_te, y_rest, y_te = _stratified(source or name, x, labels, split.test_fraction, split.seed)
    x_tr, x_va, y_tr, y_va = _stratified(source or name, x_rest, y_rest, split.val_fraction / (1 - split.test_fraction), split.seed)
    return Dataset(name, x_tr, y_tr, x_va, y_va, x_te, y_te, tuple(found))
