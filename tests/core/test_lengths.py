"""Inputs with no fixed length sized from the data's shapes (deploykit.core.lengths), and refused without them."""

from __future__ import annotations

import pytest

from deploykit.core.lengths import describe, is_sized, sized_shapes
from deploykit.errors import DataError, ModelLoadError, UnsizedInputError


def test_sized_inputs_keep_their_shape_whatever_the_data_says():
    assert sized_shapes("m.keras", {"x": (8, 8)}, None) == {"x": (8, 8)}
    assert sized_shapes("m.keras", {"x": (8, 8)}, {"x": (64,)}) == {"x": (8, 8)}  # the data is checked later


def test_one_input_takes_the_data_shape_whatever_the_data_calls_it():
    assert sized_shapes("m.keras", {"input_layer": (None,)}, {"x": (64,)}) == {"input_layer": (64,)}
    assert sized_shapes("m.keras", {"seq": (None, 8)}, {"x": (20, 8)}) == {"seq": (20, 8)}


def test_several_inputs_are_sized_by_name():
    declared = {"tokens": (None,), "numbers": (5,)}
    assert sized_shapes("m.keras", declared, {"tokens": (12,), "numbers": (5,)}) == {"tokens": (12,), "numbers": (5,)}
    with pytest.raises(DataError, match="no array for input 'tokens'"):
        sized_shapes("m.keras", declared, {"numbers": (5,), "other": (12,)})


def test_without_data_the_refusal_says_what_to_do():
    with pytest.raises(UnsizedInputError) as caught:
        sized_shapes("txt.keras", {"input_layer": (None,)}, None)
    message = str(caught.value)
    assert isinstance(caught.value, ModelLoadError) and "\n" not in message
    assert message.startswith("model txt.keras: input 'input_layer' (None,) has no fixed length")
    assert "give --data" in message and "fixed input shape" in message
    assert caught.value.inputs == {"input_layer": (None,)}


@pytest.mark.parametrize(
    "declared, data",
    [((None,), (8, 8)), ((None,), ()), ((None, 8), (20, 4))],  # another rank, no axes, another size on a sized axis
)
def test_data_that_does_not_fit_the_sized_axes_is_a_data_error(declared, data):
    with pytest.raises(DataError, match=r"input 'seq' takes samples of shape \(None"):
        sized_shapes("m.keras", {"seq": declared}, {"x": data})


def test_describe_says_one_line_per_input_sized():
    assert describe({"x": (None,)}, {"x": (64,)}) == ["input 'x' has no fixed length; fixed to 64 from the data"]
    assert describe({"seq": (None, 8), "n": (5,)}, {"seq": (20, 8), "n": (5,)}) == [
        "input 'seq' has no fixed length; fixed to 20 from the data"
    ]
    assert describe({"img": (None, None, 3)}, {"img": (32, 32, 3)}) == [
        "input 'img' has no fixed shape (None, None, 3); fixed to (32, 32, 3) from the data"
    ]
    assert is_sized((3,)) and is_sized(()) and not is_sized(None) and not is_sized((None, 3))
