"""Model inputs with no fixed length (text and sequence models), sized from the data.

keras.io's text and sequence models take ``keras.Input(shape=(None,))`` or ``(None, features)``: any length.
Deployment artifacts need every axis sized (TFLite, int8 calibration, packing, the rebuild check on random
inputs), and the data the user gives has one: its per-sample shape. :func:`sized_shapes` fills the unsized axes
of a model's declared input shapes from shapes read off the data (:mod:`deploykit.io.lengths` reads them), and
refuses without them (:class:`~deploykit.errors.UnsizedInputError`, saying what to do) or when they disagree
with an axis the model does size (:class:`~deploykit.errors.DataError`).
"""

from __future__ import annotations

from deploykit.errors import DataError, UnsizedInputError


def is_sized(shape) -> bool:
    """True when a per-sample shape is known and every axis of it has a size."""
    return shape is not None and all(d is not None for d in shape)


def sized_shapes(path, declared: dict[str, tuple | None], given: dict[str, tuple] | None) -> dict[str, tuple]:
    """Every input's per-sample shape with its unsized axes taken from ``given`` (input name -> the data's shape).

    ``given`` may name a one-input model's input anything (the data calls it ``x``). Inputs already sized keep
    their shape whatever ``given`` says: the data is checked against them later, as for any model.
    """
    if all(is_sized(s) for s in declared.values()):
        return {n: tuple(int(d) for d in s) for n, s in declared.items()}
    if not given:
        raise UnsizedInputError(path, declared)
    return {n: _fill(path, n, s, _given_for(path, n, declared, given)) for n, s in declared.items()}


def _given_for(path, name: str, declared: dict, given: dict[str, tuple]) -> tuple | None:
    """The data's shape for input ``name``: its own entry, or the only one there is for a one-input model."""
    if name in given:
        return tuple(given[name])
    if len(declared) == 1 and len(given) == 1:
        return tuple(next(iter(given.values())))
    if is_sized(declared[name]):
        return None
    raise DataError(f"model {path}: the data gives no array for input {name!r} (it has {sorted(given)})")


def _fill(path, name: str, shape: tuple | None, data: tuple | None) -> tuple[int, ...]:
    """``shape`` with each unsized axis set to the data's; an axis the model sizes must match the data's."""
    if is_sized(shape):
        return tuple(int(d) for d in shape)
    if shape is not None and (
        data is None or len(data) != len(shape) or any(d is not None and d != h for d, h in zip(shape, data))
    ):
        raise DataError(
            f"model {path}: input {name!r} takes samples of shape {_show(shape)}, but the data's are {data}"
        )
    return tuple(int(d) for d in data)


def describe(declared: dict[str, tuple | None], sized: dict[str, tuple]) -> list[str]:
    """One line per input the data sized: ``input 'x' has no fixed length; fixed to 64 from the data``."""
    lines = []
    for name, shape in declared.items():
        if is_sized(shape):
            continue
        unsized = [i for i, d in enumerate(shape or ()) if d is None]
        to = sized[name][unsized[0]] if len(unsized) == 1 else sized[name]
        what = "length" if len(unsized) == 1 else f"shape {_show(shape)}"
        lines.append(f"input {name!r} has no fixed {what}; fixed to {to} from the data")
    return lines


def _show(shape: tuple | None) -> str:
    return "(unknown)" if shape is None else str(tuple(shape))
