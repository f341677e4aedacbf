"""Request validation of ``deploykit serve``: every check names what is wrong in one line.

Plain numpy, no HTTP: the models turn a :class:`RequestError` into a 400.
Tensors are duck-typed (``name``, ``datatype``, ``shape``, ``as_numpy()``),
as kserve's ``InferInput`` is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deploykit.errors import DataError

FP32 = "FP32"
SAMPLES_PARAMETER = "samples"


class RequestError(DataError):
    """A request the server refuses (answered with 400 and this message)."""


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_parameters(parameters) -> dict:
    """Request ``parameters``: absent or an object."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise RequestError(f"'parameters' must be an object, got {type(parameters).__name__}")
    return parameters


def check_samples(parameters: dict, default: int, limit: int) -> int:
    """The ``samples`` parameter of an MC request: an integer in [1, limit], else ``default``."""
    value = parameters.get(SAMPLES_PARAMETER, default)
    if not _is_int(value) or not 1 <= value <= limit:
        raise RequestError(f"parameter 'samples' must be an integer between 1 and {limit}, got {value!r}")
    return int(value)


def refuse_samples(parameters: dict, model: str) -> None:
    """A deterministic model takes no ``samples`` parameter."""
    if SAMPLES_PARAMETER in parameters:
        raise RequestError(f"model '{model}' is deterministic: it takes no 'samples' parameter")


def check_rows(declared: int, max_rows: int, what: str) -> None:
    """At least one instance and at most ``max_rows``, before any data is converted."""
    if declared == 0:
        raise RequestError(f"{what} holds no instances (empty batch)")
    if declared > max_rows:
        raise RequestError(f"{what} has {declared} rows, more than the limit of {max_rows} per request")


def check_batch(x: np.ndarray, input_shape: Sequence[int], max_rows: int, what: str) -> np.ndarray:
    """A decoded batch: shape [N, *input_shape], 1 <= N <= max_rows, finite; returned as C-contiguous float32."""
    want = ["N", *input_shape]
    if x.ndim != len(want) or tuple(x.shape[1:]) != tuple(input_shape):
        raise RequestError(f"{what} must have shape {_shape(want)}, got {_shape(x.shape)}")
    check_rows(x.shape[0], max_rows, what)
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise RequestError(f"{what} holds {bad} NaN or infinite value{'s' if bad > 1 else ''} (after conversion to FP32)")
    return x


def check_v2_header(header, binary_bytes: int) -> None:
    """The JSON part of a v2 request read from raw bytes (binary extension or JSON without a JSON content type).

    ``binary_bytes`` is what follows the JSON; the inputs' ``binary_data_size`` must add up to it.
    """
    if not isinstance(header, dict):
        raise RequestError(f"a v2 request must be a JSON object with 'inputs', got {type(header).__name__}")
    tensors = header.get("inputs")
    if not isinstance(tensors, list):
        raise RequestError(f"'inputs' must be a list of tensors, got {type(tensors).__name__}")
    declared = 0
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            raise RequestError(f"inputs[{i}] must be an object, got {type(tensor).__name__}")
        for key, kind in (("name", str), ("datatype", str), ("shape", list)):
            if not isinstance(tensor.get(key), kind):
                what = "a list" if kind is list else "a string"
                raise RequestError(f"inputs[{i}].{key} must be {what}, got {tensor.get(key)!r:.80}")
        parameters = check_parameters(tensor.get("parameters"))
        if "data" not in tensor:
            size = parameters.get("binary_data_size")
            if not _is_int(size) or size < 0:
                raise RequestError(f"inputs[{i}] has no 'data' and no valid parameters.binary_data_size, got {size!r}")
            declared += size
    if declared != binary_bytes:
        raise RequestError(f"binary data: the inputs declare {declared} bytes, {binary_bytes} follow the JSON header")
    check_parameters(header.get("parameters"))
    outputs = header.get("outputs")
    named = isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)
    if outputs is not None and not named:
        raise RequestError("'outputs' must be a list of objects with a 'name'")


def v2_input(inputs: Sequence, name: str, input_shape: Sequence[int], max_rows: int) -> np.ndarray:
    """The one FP32 input tensor ``name`` of a v2 request, checked."""
    names = [getattr(t, "name", None) for t in inputs]
    if len(inputs) != 1 or names[0] != name:
        raise RequestError(f"expected one input tensor named '{name}', got {names}")
    tensor = inputs[0]
    what = f"input '{name}'"
    if tensor.datatype != FP32:
        raise RequestError(f"{what} must have datatype FP32, got {tensor.datatype!r}")
    shape = tensor.shape
    if not isinstance(shape, (list, tuple)) or not all(_is_int(d) and d >= 0 for d in shape):
        raise RequestError(f"{what}: 'shape' must be a list of non-negative integers, got {shape!r}")
    want = ["N", *input_shape]
    if len(shape) != len(want) or tuple(shape[1:]) != tuple(input_shape):
        raise RequestError(f"{what} must have shape {_shape(want)}, got {_shape(shape)}")
    check_rows(shape[0], max_rows, what)
    try:
        with np.errstate(over="ignore"):  # too large for FP32 becomes inf, refused below
            x = np.asarray(tensor.as_numpy())
    except (ValueError, TypeError, OverflowError) as exc:
        raise RequestError(f"{what}: the data does not fill shape {_shape(shape)} with numbers ({_first_line(exc)})") from None
    return check_batch(x, input_shape, max_rows, what)


def v1_instances(payload, input_shape: Sequence[int], max_rows: int) -> np.ndarray:
    """The ``instances`` of a v1 (TF Serving style) request, checked."""
    if not isinstance(payload, dict):
        raise RequestError('a v1 request must be a JSON object like {"instances": [[...], ...]}')
    instances = payload.get("instances")
    if not isinstance(instances, list):
        raise RequestError(f"'instances' must be a list of instances, got {type(instances).__name__}")
    what = "'instances'"
    check_rows(len(instances), max_rows, what)
    try:
        with np.errstate(over="ignore"):
            x = np.array(instances, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as exc:
        raise RequestError(f"{what} must be lists of numbers, each of shape {_shape(input_shape)} ({_first_line(exc)})") from None
    return check_batch(x, input_shape, max_rows, what)


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
