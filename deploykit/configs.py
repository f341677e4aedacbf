"""The base of deploykit's configs: frozen dataclasses that validate on construction and round-trip.

A config subclasses :class:`Config`, validates its fields in ``__post_init__``
(raising ``ConfigError`` naming the field), and gets ``to_dict`` (JSON / TOML
ready) and ``from_dict`` (unknown keys are one ``ConfigError`` naming the key).

The validators below are the one kit every config uses, so that a bad value
reads the same everywhere: ``"{where} must be ..., got {value!r}"``, and an
unknown key ``"{where}: unknown key {k!r} (allowed: ...)"``. Each returns the
value normalized (ints as floats for numbers, strings as enum members, lists
as tuples) so ``__post_init__`` can store it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from typing import Any, TypeVar

from deploykit.errors import ConfigError
from deploykit.records import to_jsonable

E = TypeVar("E", bound=enum.Enum)

#: The largest seed: scikit-learn's random_state, numpy's legacy RandomState and TensorFlow take 32-bit seeds.
SEED_MAX = 2**32 - 1
#: The most MC samples a pipeline run may ask for (the MC graph's default ``max_samples``).
MAX_MC_SAMPLES = 1000


def _refuse(where: str, what: str, value: Any) -> ConfigError:
    """The one wording of a bad value."""
    return ConfigError(f"{where} must be {what}, got {value!r}")


def is_int(value: Any) -> bool:
    """An integer (Python's or NumPy's), not a bool: what every integer option and argument accepts."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def boolean(where: str, value: Any) -> bool:
    """``value`` if it is True or False (not 0 / 1 / "yes": TOML has real booleans)."""
    if not isinstance(value, bool):
        raise _refuse(where, "true or false", value)
    return value


def integer(where: str, value: Any, low: int, high: int | None = None, *, optional: bool = False) -> int | None:
    """An int (not a bool) in ``[low, high]`` (``high`` None: no upper bound); None too if ``optional``."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise _refuse(where, f"an integer {bound}" + (" or unset" if optional else ""), value)
    return value


def number(
    where: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    optional: bool = False,
    open_low: bool = False,
    open_high: bool = False,
) -> float | None:
    """A finite int or float (not a bool) in the interval ``low``..``high``, as a float; None too if ``optional``."""
    if optional and value is None:
        return None
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (low < value if open_low else low <= value)
        and (value < high if open_high else value <= high)
    )
    if not ok:
        raise _refuse(
            where, "a number " + _interval(low, high, open_low, open_high) + (" or unset" if optional else ""), value
        )
    return float(value)


def _interval(low: float, high: float, open_low: bool, open_high: bool) -> str:
    if high == math.inf:
        return f"> {low:g}" if open_low else f">= {low:g}"
    return f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def positive(where: str, value: Any) -> float:
    """A finite number > 0 (a tolerance, a learning rate, a factor)."""
    return number(where, value, 0.0, open_low=True)  # type: ignore[return-value]


def fraction(where: str, value: Any, *, optional: bool = False) -> float | None:
    """A number in [0, 1): a sparsity, an accuracy drop (1 would mean everything)."""
    return number(where, value, 0.0, 1.0, optional=optional, open_high=True)


def choice(kind: type[E], where: str, value: Any) -> E:
    """A member of ``kind``, given as the member or its value (case-insensitive); the error lists the values."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        for member in kind:
            if str(member.value).lower() == text:
                return member
    raise _refuse(where, "one of " + ", ".join(repr(m.value) for m in kind), value)


def text(where: str, value: Any) -> str:
    """A non-empty string (a name, a path, a URI)."""
    if not isinstance(value, str) or not value.strip():
        raise _refuse(where, "a non-empty string", value)
    return value


def names(where: str, value: Any, *, split: bool = False) -> tuple[str, ...]:
    """A list of non-empty strings as a tuple; with ``split``, one comma-separated string too (a CLI flag)."""
    items = [v.strip() for v in value.split(",") if v.strip()] if split and isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v for v in items):
        raise _refuse(where, "a list of names", value)
    return tuple(items)


def check_keys(cls: type, values: Any, where: str | None = None) -> dict[str, Any]:
    """``values`` as a dict whose keys are all fields of ``cls``; anything else is one ConfigError.

    ``where`` names the table in the message (default: the class name).
    """
    where = where or cls.__name__
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table of options, got {type(values).__name__} {values!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    return dict(values)


class Config:
    """Mixin for frozen config dataclasses: ``to_dict`` / ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, values: Any):
        """Build from a plain dict (a TOML table, JSON); unknown keys are a ConfigError."""
        return cls(**cls._from_plain(check_keys(cls, values)))

    @classmethod
    def _from_plain(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Hook: turn plain TOML / JSON values into field values (lists into tuples, ...)."""
        return values
