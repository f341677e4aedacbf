"""The config kit: each validator accepts what it should, refuses the rest in one wording naming field and value."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

import pytest

from deploykit import configs
from deploykit.errors import ConfigError


class Colour(enum.Enum):
    RED = "red"
    DARK_BLUE = "dark-blue"


def refused(call, where: str, value) -> str:
    """The message of the ConfigError ``call`` raises; it must name the field and the value, in the one wording."""
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert re.fullmatch(rf"{re.escape(where)} must be .+, got {re.escape(repr(value))}", message), message
    return message


def test_boolean():
    assert configs.boolean("x.on", True) is True and configs.boolean("x.on", False) is False
    for bad in (1, 0, "true", None):
        refused(lambda: configs.boolean("x.on", bad), "x.on", bad)


def test_integer():
    assert configs.integer("n", 3, 1) == 3 and configs.integer("n", 5, 1, 5) == 5
    assert configs.integer("n", None, 0, optional=True) is None
    for bad in (0, 6, True, 2.0, "3", None):
        refused(lambda: configs.integer("n", bad, 1, 5), "n", bad)
    assert "in [1, 5]" in refused(lambda: configs.integer("n", 9, 1, 5), "n", 9)
    assert ">= 1" in refused(lambda: configs.integer("n", 0, 1), "n", 0)


def test_number():
    assert configs.number("t", 1, 0.0, 2.0) == 1.0 and isinstance(configs.number("t", 1, 0.0, 2.0), float)
    assert configs.number("t", None, 0.0, 1.0, optional=True) is None
    for bad in (math.nan, math.inf, True, "0.5", None, -0.1, 2.5):
        refused(lambda: configs.number("t", bad, 0.0, 2.0), "t", bad)
    assert configs.number("t", 0.0, 0.0, 1.0, open_high=True) == 0.0
    assert "a number in [0, 1)" in refused(lambda: configs.number("t", 1.0, 0.0, 1.0, open_high=True), "t", 1.0)
    assert "or unset" in refused(lambda: configs.number("t", 3, 0.0, 1.0, optional=True), "t", 3)


def test_positive_and_fraction():
    assert configs.positive("lr", 1e-9) == 1e-9
    for bad in (0, -1.0, math.inf, False):
        refused(lambda: configs.positive("lr", bad), "lr", bad)
    assert configs.fraction("s", 0) == 0.0 and configs.fraction("s", 0.99) == 0.99
    assert configs.fraction("s", None, optional=True) is None
    for bad in (1.0, -0.01, None, "0.5"):
        refused(lambda: configs.fraction("s", bad), "s", bad)


def test_choice_accepts_member_or_value_any_case_and_lists_the_values():
    assert configs.choice(Colour, "c", Colour.RED) is Colour.RED
    assert configs.choice(Colour, "c", " Dark-Blue ") is Colour.DARK_BLUE
    for bad in ("green", 1, None, "RED_"):
        message = refused(lambda: configs.choice(Colour, "c", bad), "c", bad)
        assert "'red', 'dark-blue'" in message


def test_text_and_names():
    assert configs.text("host", "a") == "a"
    for bad in ("", "  ", None, 3):
        refused(lambda: configs.text("host", bad), "host", bad)
    assert configs.names("exclude", ["a", "b"]) == ("a", "b")
    assert configs.names("exclude", "a, b,", split=True) == ("a", "b")
    refused(lambda: configs.names("exclude", "a,b"), "exclude", "a,b")
    assert configs.names("exclude", ()) == ()
    for bad in (3, ["a", ""], ["a", 1], None):
        refused(lambda: configs.names("exclude", bad), "exclude", bad)


@dataclass(frozen=True)
class Small(configs.Config):
    size: int = 1
    name: str = "x"


def test_check_keys_one_order_and_one_wording():
    assert configs.check_keys(Small, {"size": 2}) == {"size": 2}
    with pytest.raises(ConfigError, match=re.escape("[small]: unknown key 'sise' (allowed: size, name)")):
        configs.check_keys(Small, {"sise": 2}, "[small]")
    with pytest.raises(ConfigError, match=re.escape("Small: unknown key 'sise'")):
        Small.from_dict({"sise": 2})
    with pytest.raises(ConfigError, match="Small: expected a table of options, got list"):
        Small.from_dict([1])
