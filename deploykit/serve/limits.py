"""Request validation of ``deploykit serve``: every check names what is wrong in one line.

Plain numpy, no HTTP: the models turn a :class:`RequestError` into a 400.
Tensors are duck-typed (``name``, ``datatype``, ``shape``, ``as_numpy()``),
as kserve's ``InferInput`` is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from deploykit.configs import is_int
from deploykit.errors import DataError

FP32 = "FP32"
SAMPLES_PARAMETER = "samples"
#: The most characters of a client-given name (model, tensor, output) echoed in an error or a log line.
SHOWN_CHARS = 64


class RequestError(DataError):
    """A request the server refuses (answered with 400 and this message)."""


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
    if not is_int(value) or not 1 <= value <= limit:
        raise RequestError(f"parameter 'samples' must be an integer between 1 and {limit}, got {value!r}")
    return int(value)


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """A client-given value as it may appear in an error or a log line: quoted, escaped, at most ``limit`` characters.

    Escaping (``\\n``, ``\\x1b``, ...) keeps a name with a newline from forging a log line; the bound keeps
    a 1 MB name from coming back as a 1 MB error.
    """
    if not isinstance(value, str):  # a JSON value: shown as JSON, unquoted
        text = json.dumps(value, default=repr)
        return text[:limit].encode("unicode_escape").decode("ascii") + ("..." if len(text) > limit else "")
    escaped = value[:limit].encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return f"'{escaped}'" + (f"... ({len(value)} characters)" if len(value) > limit else "")


def ignored_samples(parameters: dict, model: str, kind: str = "deterministic") -> dict | None:
    """A model without MC samples ignores ``samples`` (as Triton ignores parameters a model does not use):
    the note saying so."""
    if SAMPLES_PARAMETER not in parameters:
        return None
    return {
        "ignored_parameters": [SAMPLES_PARAMETER],
        "note": f"model '{model}' is {kind}: 'samples' applies to MC Dropout models only and was ignored",
    }


def check_classification(output: str, top, classes: int, applies: bool) -> None:
    """Triton's classification extension on ``output``: an integer in [1, classes], on a per-class output."""
    if not applies:
        raise RequestError(
            f"output {shown(output)} has no class axis: the 'classification' parameter "
            "applies to [N, classes] outputs only"
        )
    if not is_int(top) or not 1 <= top <= classes:
        raise RequestError(
            f"parameter 'classification' of output {shown(output)} must be an integer between 1 "
            f"and {classes}, got {shown(top)}"
        )


def classify(values: np.ndarray, top: int, labels: Sequence[str]) -> np.ndarray:
    """The ``top`` largest values of each row as Triton writes them: ``b"score:index:label"`` (``score:index``
    without labels), largest first; shape [N, top]."""
    order = np.argsort(-values, axis=1, kind="stable")[:, :top]
    rows = []
    for row, indices in zip(values, order, strict=True):
        rows.append([(f"{row[i]:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "")).encode() for i in indices])
    return np.array(rows, dtype=np.object_)


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
        raise RequestError(
            f"{what} holds {bad} NaN or infinite value{'s' if bad > 1 else ''} (after conversion to FP32)"
        )
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
        if tensor["datatype"] != tensor["datatype"].upper():  # kserve upper-cases it; the protocol spells "FP32"
            raise RequestError(
                f"inputs[{i}].datatype must be written as the protocol spells it (e.g. FP32), "
                f"got {shown(tensor['datatype'])}"
            )
        if not all(is_int(d) and d >= 0 for d in tensor["shape"]):
            raise RequestError(
                f"inputs[{i}].shape must be a list of non-negative integers, got {shown(tensor['shape'], 80)}"
            )
        parameters = check_parameters(tensor.get("parameters"))
        if "data" not in tensor:
            size = parameters.get("binary_data_size")
            if not is_int(size) or size < 0:
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
        got = ", ".join(shown(n) for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise RequestError(f"expected one input tensor named '{name}', got [{got}]")
    tensor = inputs[0]
    what = f"input '{name}'"
    if tensor.datatype != FP32:
        raise RequestError(f"{what} must have datatype FP32, got {shown(tensor.datatype)}")
    shape = tensor.shape
    if not isinstance(shape, (list, tuple)) or not all(is_int(d) and d >= 0 for d in shape):
        raise RequestError(f"{what}: 'shape' must be a list of non-negative integers, got {shown(shape, 80)}")
    want = ["N", *input_shape]
    if len(shape) != len(want) or tuple(shape[1:]) != tuple(input_shape):
        raise RequestError(f"{what} must have shape {_shape(want)}, got {_shape(shape)}")
    check_rows(shape[0], max_rows, what)
    if isinstance(getattr(tensor, "data", None), list):
        check_numbers(tensor.data, f"{what}: 'data'")
    try:
        with np.errstate(over="ignore"):  # too large for FP32 becomes inf, refused below
            x = np.asarray(tensor.as_numpy())
    except (ValueError, TypeError, OverflowError) as exc:
        raise RequestError(
            f"{what}: the data does not fill shape {_shape(shape)} with numbers ({_first_line(exc)})"
        ) from None
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
    check_numbers(instances, what)
    try:
        with np.errstate(over="ignore"):
            x = np.array(instances, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as exc:
        raise RequestError(
            f"{what} must be lists of numbers, each of shape {_shape(input_shape)} ({_first_line(exc)})"
        ) from None
    return check_batch(x, input_shape, max_rows, what)


def check_numbers(data: list, what: str) -> None:
    """JSON tensor data (nested lists) holds only numbers: booleans, strings and nulls are refused, not coerced."""
    found: set[type] = set()
    stack = [data]
    while stack:
        items = stack.pop()
        types = set(map(type, items))
        if list in types:
            stack.extend(v for v in items if type(v) is list)
        found |= types
    bad = sorted(t.__name__ for t in found - {list, int, float})
    if bad:
        names = {"bool": "booleans", "str": "strings", "NoneType": "nulls", "dict": "objects"}
        raise RequestError(f"{what} must hold numbers only, found {', '.join(names.get(b, b) for b in bad)}")


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
