"""Datasets: the embedded digits and diabetes, and user data as .npz, .csv or IDX files.

Every loader returns a :class:`Dataset` with a train / validation / test split
made with a fixed seed: stratified on the class for a classification dataset,
a plain seeded random split for a regression one (its targets are continuous:
no class to stratify on, and quantile bins would add a knob for little gain on
the sizes deploykit meets). The task is the one given (``task=``,
``--task``), else read off the labels: non-integer numbers, several target
columns, or integers with many values and few rows per value are regression
targets (float32, ``[N]`` or ``[N, K]``); anything else is class labels. Inputs stay raw (the model standardizes
them itself); the standardization statistics come from the training part only.
What a file declares (.npz array headers, IDX dimensions, CSV rows x columns)
is checked against :data:`deploykit.limits.DATA_BYTES` before anything is
inflated or allocated: a small compressed file can declare gigabytes.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.configs import SEED_MAX, Config, choice, integer, number
from deploykit.configs import names as name_list
from deploykit.core.task import CLASSIFIER_HEADS, MULTI_LABEL_CLASSES, OutputKind, Task
from deploykit.data.labels import _checked, _labels_for, _task_of
from deploykit.data.onehot import from_one_hot
from deploykit.data.readers import (  # noqa: F401  (read_idx: public, imported from here)
    _check_csv_header,
    _count_lines,
    _csv_rows,
    _labels_beside,
    _npz_declared_bytes,
    _numeric_if_possible,
    read_idx,
)
from deploykit.errors import ConfigError, DataError, UsageError
from deploykit.files import regular_file
from deploykit.limits import DATA_BYTES

DEFAULT_DATASET = "digits"
#: The embedded datasets (scikit-learn's, no network): name -> (loader name, task).
NAMED_DATASETS = {"digits": ("load_digits", Task.CLASSIFICATION), "diabetes": ("load_diabetes", Task.REGRESSION)}
DEFAULT_SEED = 42
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
        integer("seed", self.seed, 0, SEED_MAX)


@dataclass(frozen=True)
class Dataset:
    """A dataset split three ways: float32 inputs, and int64 class ids (classification) or float32 targets
    (regression)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    task: Task = Task.CLASSIFICATION  # REGRESSION: y_* are float32 targets [N] or [N, K], class_names is empty
    layout: Any = None  # a deploykit.core.multi_io.Layout: x / y pack a model's several inputs / outputs side by side
    own_split: tuple[str, ...] = ()  # splits deploykit made of a data file's rows ("validation", "test"): they may
    # hold rows the model was trained on (deploykit.pipeline.split_check says so)
    feature_mean: np.ndarray = field(init=False, repr=False)
    feature_var: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mean, var = _feature_stats(self.x_train.reshape(len(self.x_train), -1))
        object.__setattr__(self, "feature_mean", mean)
        object.__setattr__(self, "feature_var", var)

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

    def check_model(self, model, what: str = "") -> tuple[Task, OutputKind]:
        """The model's task and output kind, resolved once against this data; a DataError when they do not fit.

        The one check every step runs before working, so a data / model mismatch is
        the same error (DataError, exit 1, naming the data) whichever command meets it:
        the input shape, the number of outputs (classes or targets), and the task
        (a softmax model with regression targets; a logits model is a classifier of
        class data, a model with linear outputs a regressor of regression data; one
        sigmoid or linear unit with two classes a binary classifier; several sigmoid
        units a multi-label head, its labels a 0/1 matrix read as regression targets, refused with class ids).
        """
        from deploykit.core.graph import graph_from_model
        from deploykit.core.task import output_kind, resolve_task

        what = what or f"model {model.name!r}"
        self.check_input_shape(model.input_shape, what=what)
        outputs = model.output_shape[-1]
        kind = output_kind(graph_from_model(model, unsafe=True))
        self._check_vector_output(model, what)
        if kind in CLASSIFIER_HEADS and self.task is Task.REGRESSION:
            raise DataError(
                f"data {self.name!r} holds regression targets, but {what} ends in a softmax (a classifier); "
                "give class labels, or a model with linear outputs"
            )
        if kind is OutputKind.SIGMOID and outputs != 1 and self.task is Task.CLASSIFICATION:  # K units, class ids
            raise DataError(f"data {self.name!r} and {what}: " + MULTI_LABEL_CLASSES.format(units=outputs))
        binary = (
            outputs == 1 and kind not in CLASSIFIER_HEADS and self.task is Task.CLASSIFICATION and self.num_classes == 2
        )  # one sigmoid or linear unit for two classes
        if isinstance(outputs, int) and outputs != self.num_outputs and not binary:
            have = (
                f"{self.num_classes} classes"
                if self.task is Task.CLASSIFICATION
                else f"{self.num_outputs} regression target(s)"
            )
            raise DataError(f"data {self.name!r} has {have}, but {what} outputs {outputs}")
        try:
            return resolve_task(kind, int(outputs), task=self.task)
        except UsageError as exc:
            raise DataError(f"data {self.name!r} and {what}: {exc}") from None

    def _check_vector_output(self, model, what: str) -> None:
        """Refuse an output that is still not one vector per row (one with every axis sized is packed into its
        columns at load, deploykit.core.multi_io_model.pack_model): an axis without a size."""
        shape = list(model.output_shape[1:])
        if len(shape) >= 2 and None in shape:
            raise DataError(
                f"data {self.name!r} and {what}: the output of shape {shape} has an axis without a size; an output "
                "that is not one vector per row is read as its values side by side, which needs every axis sized"
            )

    def summary(self) -> str:
        what = (
            f"{self.num_classes} classes"
            if self.task is Task.CLASSIFICATION
            else f"{self.num_outputs} regression target(s)"
        )
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} val / {len(self.x_test)} test, "
            f"inputs {self.input_shape}, {what}" + (f" (packed: {self.layout.describe()})" if self.layout else "")
        )


def _feature_stats(flat: np.ndarray, rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance in float64, over chunks of rows: a float64 copy of the whole training split
    (and ``var``'s full-size temporary) would triple the memory a large dataset takes."""
    total = np.zeros(flat.shape[1], np.float64)
    for i in range(0, len(flat), rows):
        total += flat[i : i + rows].sum(axis=0, dtype=np.float64)
    mean = total / max(len(flat), 1)
    squares = np.zeros_like(mean)
    for i in range(0, len(flat), rows):
        squares += np.square(flat[i : i + rows] - mean).sum(axis=0)
    return mean.astype(np.float32), (squares / max(len(flat), 1)).astype(np.float32)


def load_dataset(
    source: str | os.PathLike | None = DEFAULT_DATASET,
    *,
    label_column: str = "label",
    split: SplitConfig | None = None,
    class_names: Sequence[str] | str | None = None,
    task: Task | str | None = None,
    layout=None,
) -> Dataset:
    """Load ``source``: ``"digits"`` or ``"diabetes"`` (embedded), or a path to .npz, .csv or IDX data.

    An IDX source is either an images file (``*-images-idx3-ubyte[.gz]``; the
    labels file beside it is found by name) or a folder holding Fashion-MNIST /
    MNIST's files (``train-*`` and optionally ``t10k-*``).

    ``class_names`` (a list, or one comma-separated string) fixes the classes'
    order: integer labels are ids into it, string labels are mapped by it. An
    .npz may hold the same as an array ``class_names``. Without either, string
    labels are numbered in sorted order (with a warning, as a model trained with
    another order would then get wrong names in its exported metadata).

    ``task`` (a :class:`~deploykit.core.task.Task` or its name) says what the labels are;
    None reads it off them (see the module docstring). A regression dataset has
    float32 targets and no class names.

    ``layout`` (a :class:`deploykit.core.multi_io.Layout`, the model's inputs and outputs): an .npz may then hold
    one array per model input and output, named after them (:func:`deploykit.core.multi_io.npz_parts`).
    """
    split = split or SplitConfig()
    task = None if task is None else choice(Task, "task", task)
    given = None if class_names is None else check_class_names("class_names", class_names)
    if given is not None and task is Task.REGRESSION:
        raise DataError("class names were given, but the task is regression (its targets have no classes)")
    if source is None or str(source) in NAMED_DATASETS:
        return _named(str(source or DEFAULT_DATASET), split, given, task)
    path = Path(source)
    if not path.exists():
        raise DataError(f"data {path}: no such file or folder (or use a built-in: {', '.join(NAMED_DATASETS)})")
    if not path.is_dir():
        regular_file(path, "data", DataError)  # /dev/zero or a FIFO named data.csv never ends
    kind = _format_of(path)
    if kind == "npz":
        return _load_npz(path, split, given, task, layout)
    if kind == "csv":
        return _load_csv(path, label_column, split, given, task)
    return _load_idx(path, split, given, task)


def _named(name: str, split: SplitConfig, given, task: Task | None) -> Dataset:
    """An embedded scikit-learn dataset (no network): digits (10 classes) or diabetes (one regression target)."""
    import sklearn.datasets

    loader, own = NAMED_DATASETS[name]
    bunch = getattr(sklearn.datasets, loader)()
    if task is not None and task is not own:
        raise DataError(f"data {name!r} is a {own.value} dataset, not {task.value}")
    if own is Task.CLASSIFICATION:
        given = given or [str(i) for i in range(len(np.unique(bunch.target)))]
    return _split_arrays(name, bunch.data, bunch.target, split, names=given, task=own)


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


def _load_npz(
    path: Path, split: SplitConfig, given: tuple[str, ...] | None, task: Task | None = None, layout=None
) -> Dataset:
    DATA_BYTES.check(path, _npz_declared_bytes(path), "the .npz (its array headers)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile / pickle / value errors all mean "not a valid npz"
        raise DataError(f"data {path}: not a readable .npz file ({exc})") from None
    names = _npz_class_names(path, arrays.get("class_names"), given)
    from deploykit.core.multi_io import is_named_npz

    if is_named_npz(arrays, layout):
        return load_named_npz(path, arrays, layout, split, names, task)
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        val = (arrays["x_val"], arrays["y_val"]) if {"x_val", "y_val"} <= arrays.keys() else None
        return _given_test(
            path, (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]), split, val, names, task
        )
    if {"x", "y"} <= arrays.keys():
        return _split_arrays(path.name, arrays["x"], arrays["y"], split, names=names, source=path, task=task)
    raise DataError(
        f"data {path}: an .npz must hold arrays x and y, or x_train, y_train, x_test and y_test "
        f"(a model with several inputs or outputs: arrays named after them); found {sorted(arrays)}"
    )


def load_named_npz(
    path: Path, arrays: dict, layout, split: SplitConfig, names=None, task: Task | None = None
) -> Dataset:
    """An .npz (or dict of arrays) named after a model's inputs and outputs (deploykit.core.multi_io), packed in name
    order."""
    import dataclasses

    from deploykit.core.multi_io import npz_parts

    if layout.packs_outputs:  # several heads, or an image out: regression values (multi_io_model.pack_model)
        if task is Task.CLASSIFICATION:
            what = (
                f"has {len(layout.outputs)} outputs, shipped as regression heads"
                if layout.several_outputs
                else f"output {layout.outputs[0].describe()} is shipped as a regression of its values"
            )
            raise DataError(f"data {path}: the model {what}; --task classification does not apply")
        task = Task.REGRESSION
    parts = npz_parts(path, arrays, layout)
    if "all" in parts:
        data = _split_arrays(path.name, *parts["all"], split, names=names, source=path, task=task)
    else:
        data = _given_test(path, parts["train"], parts["test"], split, parts.get("val"), names, task)
    return dataclasses.replace(data, layout=layout)


def _npz_class_names(path: Path, stored, given: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The .npz's ``class_names`` array (strings), checked; class names given as well must agree with it."""
    if stored is None:
        return given
    if stored.ndim != 1 or stored.dtype.kind != "U":
        raise DataError(
            f"data {path}: class_names must be a 1-D array of strings, got {stored.dtype} of shape {stored.shape}"
        )
    try:
        names = check_class_names(f"data {path}: class_names", [str(n) for n in stored])
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    if given is not None and given != names:
        raise DataError(
            f"data {path}: holds class_names {list(names)}, but {list(given)} were given; give none or the same"
        )
    return names


def _load_csv(
    path: Path, label_column: str, split: SplitConfig, given: tuple[str, ...] | None, task: Task | None = None
) -> Dataset:
    """Read a CSV row by row into a preallocated array, its size checked from the line count first.

    ``label_column`` may name several columns, comma-separated (``--label-column y1,y2``): regression targets [N, K].
    """
    try:
        lines, columns = _count_lines(path)
        DATA_BYTES.check(path, max(lines - 1, 1) * columns * 4, f"the CSV ({lines - 1} rows x {columns} columns)")
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a UTF-8 BOM is not part of the header
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            columns = [c.strip() for c in label_column.split(",")]
            _check_csv_header(path, header, columns, lines)
            labels, feats = _csv_rows(path, reader, header, [header.index(c) for c in columns], lines - 1)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"data {path}: not a readable CSV text file ({exc})") from None
    if not labels:
        raise DataError(f"data {path}: a CSV needs a header row and at least one data row")
    y = _numeric_if_possible(labels)
    if len(columns) > 1 and y.dtype.kind in "USO":
        raise DataError(f"data {path}: several label columns ({label_column}) must all be numbers (regression targets)")
    return _split_arrays(path.name, feats, y, split, names=given, source=path, task=task)


def _load_idx(path: Path, split: SplitConfig, given: tuple[str, ...] | None, task: Task | None = None) -> Dataset:
    if not path.is_dir():
        return _split_arrays(
            path.name, read_idx(path), read_idx(_labels_beside(path)), split, names=given, source=path, task=task
        )
    names = sorted(p.name for p in path.iterdir())
    train = [n for n in names if n.startswith("train") and "images" in n]
    test = [n for n in names if n.startswith("t10k") and "images" in n]
    if not train:
        raise DataError(f"data {path}: no train-images-idx3-ubyte[.gz] file in the folder")
    train_xy = (read_idx(path / train[0]), read_idx(_labels_beside(path / train[0])))
    if not test:
        return _split_arrays(path.name, *train_xy, split, names=given, source=path, task=task)
    test_xy = (read_idx(path / test[0]), read_idx(_labels_beside(path / test[0])))
    return _given_test(path, train_xy, test_xy, split, names=given, task=task)


def _given_test(path: Path, train, test, split: SplitConfig, val=None, names=None, task: Task | None = None) -> Dataset:
    """A dataset whose test part (and maybe validation part) the source fixes; validation comes from train."""
    parts = {"train": _checked(path, *train, "train"), "test": _checked(path, *test, "test")}
    if val is not None:
        parts["val"] = _checked(path, *val, "val")
    for name, (x, _) in parts.items():
        if x.shape[1:] != parts["train"][0].shape[1:]:
            raise DataError(
                f"data {path}: train inputs have shape {parts['train'][0].shape[1:]} but {name} inputs {x.shape[1:]}"
            )
    y_all, names = from_one_hot(path, np.concatenate([y for _, y in parts.values()]), names, task)
    task = _task_of(path, y_all, names, task)
    labels, names = _labels_for(path, y_all, names, task)
    bounds = np.cumsum([len(y) for _, y in parts.values()])[:-1]
    encoded = dict(zip(parts, np.split(labels, bounds)))
    x_tr, x_te = parts["train"][0], parts["test"][0]
    if val is not None:
        x_va, y_tr, y_va = parts["val"][0], encoded["train"], encoded["val"]
    else:
        x_tr, x_va, y_tr, y_va = _split(
            path, x_tr, encoded["train"], split.val_fraction / (1 - split.test_fraction), split.seed, task
        )
    made = () if val is not None else ("validation",)
    return Dataset(path.name, x_tr, y_tr, x_va, y_va, x_te, encoded["test"], tuple(names), task, own_split=made)


def _split(source, x, y, fraction: float, seed: int, task: Task):
    """A seeded split: stratified on the class (classification), plain random (regression)."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(
            x, y, test_size=fraction, stratify=y if task is Task.CLASSIFICATION else None, random_state=seed
        )
    except ValueError as exc:
        what = "stratified split" if task is Task.CLASSIFICATION else "split"
        raise DataError(f"data {source}: cannot make a {what} ({exc})") from None


def _split_arrays(
    name: str, x, y, split: SplitConfig, names: list[str] | None = None, source=None, task: Task | None = None
) -> Dataset:
    x, y = _checked(source or name, x, y, "x/y")
    y, names = from_one_hot(source or name, y, names, task)
    task = _task_of(source or name, y, names, task)
    labels, found = _labels_for(source or name, y, names, task)
    x_rest, x_te, y_rest, y_te = _split(source or name, x, labels, split.test_fraction, split.seed, task)
    x_tr, x_va, y_tr, y_va = _split(
        source or name, x_rest, y_rest, split.val_fraction / (1 - split.test_fraction), split.seed, task
    )
    made = ("validation", "test") if source is not None else ()  # an embedded dataset: deploykit's split is its own
    return Dataset(name, x_tr, y_tr, x_va, y_va, x_te, y_te, tuple(found), task, own_split=made)
