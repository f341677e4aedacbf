"""Models with several inputs or outputs: one packed tensor inside deploykit, one named tensor per model tensor outside.

Every step of deploykit (fold, pruning, int8 preparation, validation, the MC graph) works on a model with one
input and one output. A model with several (the book's Wide & Deep network, a three-headed regressor) is
therefore loaded as its *packed* twin (:mod:`deploykit.core.multi_io_model`): one input holding every model input
flattened side by side, split back inside the graph by exact slicing layers, and one output holding every
model output flattened side by side. So is a model whose one output is not one vector per row (an autoencoder's
image [8, 8, 1], a per-timestep sequence): one ``Reshape`` flattens it into its K values, a K-target regression to
every step. Nothing is computed differently: slicing and concatenation move values.

Outside, users see their own tensors: the saved ``model.keras`` is the model with its own inputs and outputs,
the ONNX and TFLite artifacts have one input and one output per model tensor, named after it (an image out: one
output named after the model's, of the image's shape), and the server
answers one v2 tensor per input and output. The one convention that ties both sides together is the
:class:`Layout`: inputs and outputs **in the order of their names**. A runner (onnxruntime, LiteRT) of an
artifact with several named inputs packs and unpacks by that order without reading any metadata.

Data for such a model is an ``.npz`` whose arrays are named after the model's inputs and outputs
(:func:`npz_parts`). Pure numpy: the server and the runtime worker import this module.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.errors import DataError, UsageError

log = logging.getLogger(__name__)

#: The packed model's one input and one output (layer names inside deploykit; never in an artifact).
PACKED_INPUT = "deploykit_packed_input"
PACKED_OUTPUT = "deploykit_packed_output"
#: Prefix of the layers that cut one model input out of the packed input, and that flatten one output.
SPLIT_PREFIX = "deploykit_split_"
FLAT_PREFIX = "deploykit_flat_"
#: The .npz array that holds the targets of a one-output model (or of every output of a model whose heads
#: share their targets, as the book trains its auxiliary output).
TARGETS = "y"
#: The optional split suffixes of an .npz's arrays, as ``x_train`` / ``x_val`` / ``x_test``.
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Tensor:
    """One model input or output: its name and its per-sample shape."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def describe(self) -> str:
        return f"{self.name} {list(self.shape)}"


@dataclass(frozen=True)
class Layout:
    """How a model's inputs and outputs sit in the packed tensors: side by side, in the order of their names."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @classmethod
    def of(cls, inputs: dict[str, tuple], outputs: dict[str, tuple]) -> Layout:
        """The layout of tensors given by name -> per-sample shape (sorted by name here, the one convention)."""

        def tensors(d):
            return tuple(Tensor(str(n), tuple(int(v) for v in d[n])) for n in sorted(d))

        return cls(tensors(inputs), tensors(outputs))

    @property
    def several_inputs(self) -> bool:
        return len(self.inputs) > 1

    @property
    def several_outputs(self) -> bool:
        return len(self.outputs) > 1

    @property
    def packs_outputs(self) -> bool:
        """The outputs are packed into columns: several, or one whose rows are not one vector (an image out, [8, 8, 1]),
        so every step sees one [N, K] regressor."""
        return len(self.outputs) > 1 or any(len(t.shape) > 1 for t in self.outputs)

    @property
    def packed_input_shape(self) -> tuple[int, ...]:
        """A packed row's input shape: one input keeps its own (an image stays [8, 8, 1]), several sit side by side."""
        return self.inputs[0].shape if len(self.inputs) == 1 else (self.input_size,)

    @property
    def input_size(self) -> int:
        return sum(t.size for t in self.inputs)

    @property
    def output_size(self) -> int:
        return sum(t.size for t in self.outputs)

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def columns(self, name: str) -> slice:
        """The packed output's columns that hold output ``name``."""
        return _offsets(self.outputs)[name]

    def split_inputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The packed input [N, D] as one array per model input, shaped as the model takes it."""
        return _split(self.inputs, x)

    def split_outputs(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """The packed output [N, K] as one array per model output."""
        return _split(self.outputs, y)

    def join_inputs(self, values: dict[str, np.ndarray]) -> np.ndarray:
        return _join(self.inputs, values)

    def join_outputs(self, values: dict[str, np.ndarray]) -> np.ndarray:
        return _join(self.outputs, values)

    def describe(self) -> str:
        """``inputs a [5], b [6]; outputs c [1]``: what a message shows."""
        return (
            f"inputs {', '.join(t.describe() for t in self.inputs)}; "
            f"outputs {', '.join(t.describe() for t in self.outputs)}"
        )

    def to_dict(self) -> dict:
        return {
            "inputs": [{"name": t.name, "shape": list(t.shape)} for t in self.inputs],
            "outputs": [{"name": t.name, "shape": list(t.shape)} for t in self.outputs],
        }


def _offsets(tensors: tuple[Tensor, ...]) -> dict[str, slice]:
    out, start = {}, 0
    for t in tensors:
        out[t.name] = slice(start, start + t.size)
        start += t.size
    return out


def _split(tensors: tuple[Tensor, ...], packed: np.ndarray) -> dict[str, np.ndarray]:
    packed = np.asarray(packed)
    flat = packed.reshape(len(packed), -1)
    return {
        t.name: np.ascontiguousarray(flat[:, s]).reshape(len(packed), *t.shape)
        for t, s in zip(tensors, _offsets(tensors).values())
    }


def _join(tensors: tuple[Tensor, ...], values: dict[str, np.ndarray]) -> np.ndarray:
    parts = [np.asarray(values[t.name]) for t in tensors]
    rows = len(parts[0])
    return np.concatenate([p.reshape(rows, -1) for p in parts], axis=1)


# --- artifacts: what a runner sees -----------------------------------------------------------------


def artifact_layout(inputs: dict[str, tuple], outputs: dict[str, tuple]) -> Layout | None:
    """The layout of an artifact with several named inputs or outputs (None: one input, read as it is).

    ``inputs`` / ``outputs``: name -> per-sample shape, as the runtime reports them. An artifact's outputs
    are packed only when it has several and none is a deploykit contract output (``probabilities``,
    ``prediction``, an MC model's ``mean``...), so a logits classifier keeps its main output.
    """
    from deploykit.core.contract import (
        DETERMINISTIC_OUTPUTS,
        OUTPUT_NAMES,
        REGRESSION_OUTPUT_NAMES,
    )

    contract = (
        {n for names in DETERMINISTIC_OUTPUTS.values() for n in names}
        | set(OUTPUT_NAMES)
        | set(REGRESSION_OUTPUT_NAMES)
    )  # a logits classifier's or an MC model's outputs are not model heads
    several_outputs = (len(outputs) > 1 and not (contract & set(outputs))) or _shaped_output(outputs, contract)
    if len(inputs) <= 1 and not several_outputs:
        return None
    packed = {**inputs, **(outputs if several_outputs else {})}
    for name, shape in packed.items():  # a runtime reports an axis it cannot size as a name or None
        if not all(isinstance(d, (int, np.integer)) for d in shape):
            raise UsageError(
                f"tensor {name!r} has axes of unknown size after the batch axis {list(shape)}: several inputs or "
                "outputs are packed side by side in one row, which needs fixed shapes"
            )
    return Layout.of(inputs, outputs if several_outputs else {})


def _shaped_output(outputs: dict[str, tuple], contract: set[str]) -> bool:
    """One model output whose rows are not one vector ([8, 8, 1], its axes all sized), named after the model's output:
    deploykit's artifact of an image-out model, read as its packed [N, K] columns. An axis without a size (a
    foreign file's variable-length sequence) leaves the output as it is."""
    if len(outputs) != 1:
        return False
    ((name, shape),) = outputs.items()
    sized = all(isinstance(d, (int, np.integer)) and d > 0 for d in shape)
    return name not in contract and len(shape) > 1 and sized


# --- data: an .npz named after the model's tensors ---------------------------------------------------


def npz_parts(path: Path, arrays: dict[str, np.ndarray], layout: Layout) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The packed ``(x, y)`` of each part of an .npz named after the model's inputs and outputs.

    Each input is an array of its name (``wide_input``), or arrays ``NAME_train`` and ``NAME_test`` (and
    optionally ``NAME_val``). Targets: one array per output name, or one array ``y`` (``y_train``...) for a
    one-output model, or shared by every output of the same width (the book trains its auxiliary head
    on the main head's targets). Returns ``{"all": (x, y)}`` or ``{"train":, "test":[, "val":]}``; a
    missing or misshapen array is one DataError naming it.
    """
    layout = _aliased(arrays, layout)
    parts = _parts_present(path, arrays, layout)
    out = {}
    for part in parts:
        x = [_input_array(path, arrays, t, part) for t in layout.inputs]
        y = _targets(path, arrays, layout, part)
        rows = {len(a) for a in [*x, y]}
        if len(rows) != 1:
            counts = ", ".join(f"{t.name}{_suffix(part)}: {len(a)}" for t, a in zip(layout.inputs, x))
            raise DataError(
                f"data {path}: the arrays of one split must have as many rows each ({counts}, targets: {len(y)})"
            )
        out[part] = (_packed_inputs(x), y)
    return out


def _packed_inputs(x: list[np.ndarray]) -> np.ndarray:
    """The inputs of a packed row (:attr:`Layout.packed_input_shape`): one input as the model takes it (an image
    stays [N, 8, 8, 1]), several flattened side by side."""
    if len(x) == 1:
        return x[0].astype(np.float32, copy=False)
    return np.concatenate([a.reshape(len(a), -1).astype(np.float32, copy=False) for a in x], axis=1)


def is_named_npz(arrays: dict[str, np.ndarray], layout: Layout | None) -> bool:
    """True when an .npz is to be read by the model's tensor names (packed outputs, or no ``x`` / ``x_train``)."""
    return layout is not None and (layout.packs_outputs or ("x" not in arrays and "x_train" not in arrays))


def _aliased(arrays: dict, layout: Layout) -> Layout:
    """A one-input layout whose input is read from ``x``, or from the one array no output claims, when the .npz
    does not name it (an artifact calls its one input ``input``; the .npz may use the model's name for it)."""
    if layout.several_inputs or not layout.inputs:
        return layout
    name = layout.inputs[0].name
    if any(name + _suffix(p) in arrays for p in ("all", "train")):
        return layout
    claimed = {t.name for t in layout.outputs} | {TARGETS, "class_names"}
    bases = {k.rsplit("_", 1)[0] if k.rsplit("_", 1)[-1] in PARTS else k for k in arrays}
    left = ["x"] if "x" in bases else sorted(bases - claimed)
    if len(left) != 1:
        return layout
    return Layout((Tensor(left[0], layout.inputs[0].shape),), layout.outputs)


def _suffix(part: str) -> str:
    return "" if part == "all" else f"_{part}"


def _parts_present(path: Path, arrays: dict, layout: Layout) -> tuple[str, ...]:
    """("all",) when every input has its array, else ("train", "test"[, "val"]); a missing one named."""
    first = layout.inputs[0].name
    split = f"{first}_train" in arrays or f"{first}_test" in arrays
    parts = ("train", "test") + (("val",) if f"{first}_val" in arrays else ()) if split else ("all",)
    for t in layout.inputs:
        for part in parts:
            if t.name + _suffix(part) not in arrays:
                raise DataError(
                    f"data {path}: no array {t.name + _suffix(part)!r} for the model input {t.name!r} "
                    f"(the model's {layout.describe()}; the .npz holds {', '.join(sorted(arrays))}). " + NPZ_RULE
                )
    return parts


def _input_array(path: Path, arrays: dict, tensor: Tensor, part: str) -> np.ndarray:
    name = tensor.name + _suffix(part)
    a = np.asarray(arrays[name])
    if not np.issubdtype(a.dtype, np.number):
        raise DataError(f"data {path}: array {name!r} must be numeric, got {a.dtype}")
    if a.ndim < 1 or tuple(a.shape[1:]) != tensor.shape:
        raise DataError(
            f"data {path}: array {name!r} has rows of shape {list(a.shape[1:])}, but the model input "
            f"{tensor.name!r} takes {list(tensor.shape)}"
        )
    return a


def _targets(path: Path, arrays: dict, layout: Layout, part: str) -> np.ndarray:
    """The targets of one part: one output's array or ``y`` as it is, several outputs' side by side."""
    sfx = _suffix(part)
    if not layout.packs_outputs:
        name = (
            layout.outputs[0].name + sfx if layout.outputs and layout.outputs[0].name + sfx in arrays else TARGETS + sfx
        )
        if name not in arrays:
            raise DataError(
                f"data {path}: no targets array {TARGETS + sfx!r} (the model's {layout.describe()}; "
                f"the .npz holds {', '.join(sorted(arrays))}). " + NPZ_RULE
            )
        return np.asarray(arrays[name])
    columns = []
    for t in layout.outputs:
        name = t.name + sfx if t.name + sfx in arrays else TARGETS + sfx
        if name not in arrays:
            raise DataError(
                f"data {path}: no targets array {t.name + sfx!r} for the model output {t.name!r}, nor a "
                f"shared {TARGETS + sfx!r} (the model's {layout.describe()}; the .npz holds "
                f"{', '.join(sorted(arrays))}). " + NPZ_RULE
            )
        a = np.asarray(arrays[name])
        if a.dtype.kind not in "fiub":
            raise DataError(f"data {path}: array {name!r} must hold numbers (regression targets), got {a.dtype}")
        a = _one_hot_ids(path, name, a, t)
        a = a.reshape(len(a), -1)
        if a.shape[1] != t.size:
            raise DataError(
                f"data {path}: array {name!r} has {a.shape[1]} target column(s) per row, but the model "
                f"output {t.name!r} has {t.size}"
            )
        if layout.several_outputs and name == TARGETS + sfx:
            log.info("data %s: output %s is compared with the shared targets %r", path, t.name, name)
        columns.append(a.astype(np.float32))
    return np.concatenate(columns, axis=1)


def _one_hot_ids(path: Path, name: str, a: np.ndarray, tensor: Tensor) -> np.ndarray:
    """Targets ``a`` for output ``tensor`` [..., C], one-hot when they are its class ids: one axis fewer than the
    output (a segmentation's [N, H, W] mask for [H, W, C]; [N] or [N, 1] for a [C] head) and whole numbers in
    [0, C), which is said in one line. Targets of the output's own size are returned as they are."""
    classes = tensor.shape[-1] if tensor.shape else 0
    ids_shape = tuple(tensor.shape[:-1])
    if (
        classes < 2
        or a.reshape(len(a), -1).shape[1] == tensor.size
        or tuple(a.shape[1:]) not in (ids_shape, (*ids_shape, 1))
    ):
        return a
    if a.size and not (np.all(a == np.round(a)) and a.min() >= 0 and a.max() < classes):
        return a  # not class ids: the size check that follows names the mismatch
    log.info(
        "data %s: array %r holds class ids of output %r, read as one-hot rows of its %d classes",
        path,
        name,
        tensor.name,
        classes,
    )
    return np.eye(classes, dtype=np.float32)[a.reshape(len(a), *ids_shape).astype(np.int64)]


#: What an .npz for a model with several inputs or outputs holds (error messages, --help and the README say it).
NPZ_RULE = (
    "For a model with several inputs or outputs, an .npz holds one array per model input, named after it "
    "(or NAME_train / NAME_test [/ NAME_val]), and the targets: one array per output name, or one array "
    "'y' (shared by every output)"
)


def per_output(
    predictions: np.ndarray, reference: np.ndarray, layout: Layout | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{output name: (its predictions, its reference)}`` of packed arrays (one entry ``""`` without a layout)."""
    if layout is None or not layout.several_outputs:
        return {"": (predictions, reference)}
    p = np.asarray(predictions).reshape(len(predictions), -1)
    r = np.asarray(reference).reshape(len(reference), -1)
    return {t.name: (p[:, layout.columns(t.name)], r[:, layout.columns(t.name)]) for t in layout.outputs}
