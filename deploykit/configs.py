"""The base of deploykit's configs: frozen dataclasses that validate on construction and round-trip.

A config subclasses :class:`Config`, validates its fields in ``__post_init__``
(raising ``ConfigError`` naming the field), and gets ``to_dict`` (JSON / TOML
ready) and ``from_dict`` (unknown keys are one ``ConfigError`` naming the key).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deploykit.errors import ConfigError
from deploykit.records import to_jsonable


def check_keys(cls: type, values: Any, where: str | None = None) -> dict[str, Any]:
    """``values`` as a dict whose keys are all fields of ``cls``; anything else is one ConfigError."""
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
