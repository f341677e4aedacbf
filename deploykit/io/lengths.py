"""Loading a model whose inputs have no fixed length (text, sequences) at the sizes of the user's data.

keras.io's text and sequence models declare ``Input(shape=(None,))`` or ``(None, features)``; deploykit's
artifacts need every axis sized (:mod:`deploykit.core.lengths`). :func:`load_model_for` loads a model file and,
when it refuses for that reason and data was given, reads the per-sample shape of each input off the data
(an .npz's array headers, nothing inflated; other sources as loaded), loads it again at those sizes and says so in
one line per input (kept for the optimize report: :func:`sizing`). Without data the refusal stands: it says
to give data or to save the model with a fixed input shape.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from deploykit.core.lengths import describe, is_sized, sized_shapes
from deploykit.errors import DataError, UnsizedInputError
from deploykit.files import regular_file

_SIZED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: What a one-input model's input is called in the data when not by its own name.
_X = ("x", "x_train")


def load_model_for(path, data, *, unsafe: bool = False, say=None, label_column: str = "label"):
    """:func:`~deploykit.io.models.load_model`, its unsized input axes (if any) fixed to ``data``'s sizes.

    ``data`` is what ``--data`` / ``data=`` gives (a path, ``"digits"``, a Dataset, ``(x, y)`` or a dict of arrays),
    or None: a model with unsized inputs is then refused with its one-line reason.
    """
    from deploykit.io.models import load_model

    try:
        return load_model(path, unsafe=unsafe)
    except UnsizedInputError as exc:
        if data is None:
            raise
        declared = exc.inputs
    sized = sized_shapes(path, declared, data_shapes(data, declared, label_column))
    model = load_model(path, unsafe=unsafe, input_shapes=sized)
    lines = describe(declared, sized)
    for line in lines:
        (say or _progress)(line)
    _SIZED[model] = lines
    return model


def sizing(model) -> list[str]:
    """The lines :func:`load_model_for` said when it sized ``model``'s inputs from the data (none otherwise)."""
    try:
        return list(_SIZED.get(model, ()))
    except TypeError:  # not weak-referenceable: nothing was recorded for it
        return []


def data_shapes(data, declared: dict[str, tuple | None], label_column: str = "label") -> dict[str, tuple]:
    """The per-sample shape in ``data`` of each input ``declared`` leaves unsized (input name -> declared shape; a
    one-input model's input may be called ``x`` there)."""
    if hasattr(data, "x_train"):  # a Dataset: packed several inputs are in its layout
        layout = getattr(data, "layout", None)
        return {t.name: t.shape for t in layout.inputs} if layout else {"x": tuple(data.input_shape)}
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return {"x": tuple(np.shape(data[0])[1:])}
    if isinstance(data, dict):
        return _named({k: np.shape(v) for k, v in data.items()}, declared, "the arrays given")
    if str(data).lower().endswith(".npz"):
        return _named(_npz_shapes(Path(data)), declared, str(data))
    from deploykit.data.dataset import load_dataset  # a .csv, IDX files, an embedded dataset: as the run loads it

    return {"x": tuple(load_dataset(data, label_column=label_column).input_shape)}


def _named(arrays: dict[str, tuple], declared: dict, where: str) -> dict[str, tuple]:
    """The per-sample shapes of the arrays (``arrays``: name -> shape) named after the unsized inputs (``NAME`` or
    ``NAME_train``; a one-input model's also ``x``): a sized input needs no array here."""
    names = [n for n, s in declared.items() if not is_sized(s)]
    keys = {n: [n, f"{n}_train"] + (list(_X) if len(declared) == 1 else []) for n in names}
    found = {n: next((k for k in ks if k in arrays), None) for n, ks in keys.items()}
    missing = [n for n, k in found.items() if k is None]
    if missing:
        raise DataError(
            f"data {where}: no array gives the size of input {', '.join(map(repr, missing))} (the model leaves it "
            f"unsized; name an array after it, or x for a one-input model); found {sorted(arrays)}"
        )
    return {n: tuple(arrays[k])[1:] for n, k in found.items()}


def _npz_shapes(path: Path) -> dict[str, tuple]:
    """The shapes an .npz's arrays declare in their headers (nothing inflated), by array name."""
    from deploykit.data.readers import npz_headers

    if not path.exists():
        raise DataError(f"data {path}: no such file")
    regular_file(path, "data", DataError)
    return {name: header[0] for name, (_stored, header) in npz_headers(path).items() if header is not None}


def _progress(line: str) -> None:
    from deploykit.log import progress

    progress(line)
