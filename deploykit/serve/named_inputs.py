"""Requests to a model with several inputs (deploykit.core.multi_io): one v2 tensor per input, by name; v1 instances
as objects.

A deterministic artifact of a model with several inputs has one float input per model input, named after it.
A v2 request sends each as its own tensor (any order; each checked as a one-input model's tensor is, by
:mod:`deploykit.serve.limits`); a v1 request sends ``{"instances": [{"wide": [...], "deep": [...]}, ...]}``.
Every input must have as many rows. The batch is then a dict name -> array, fed to onnxruntime as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deploykit.serve import limits


def rows(x) -> int:
    """Rows of a batch: an array, or a dict of arrays (one per input)."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def part(x, start: int, stop: int):
    """Rows ``start:stop`` of a batch (an array or a dict of arrays)."""
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def feed(x, input_name: str) -> dict[str, np.ndarray]:
    """What onnxruntime is fed: the named arrays, or the one array under ``input_name``."""
    return dict(x) if isinstance(x, dict) else {input_name: x}


def v2_inputs(tensors: Sequence, inputs: Sequence, max_rows: int) -> dict[str, np.ndarray]:
    """One checked FP32 array per model input, each from the v2 tensor of its name."""
    want = [i.name for i in inputs]
    names = [getattr(t, "name", None) for t in tensors]
    unknown = [n for n in names if n not in want]
    missing = [n for n in want if n not in names]
    if unknown or missing or len(names) != len(want):
        raise limits.RequestError(
            f"expected one input tensor per model input ({', '.join(want)}), got "
            f"[{', '.join(limits.shown(n) for n in names[: len(want) + 2])}]"
        )
    out = {}
    for tensor, name in zip(tensors, names):
        spec = inputs[want.index(name)]
        out[name] = limits.v2_input([tensor], name, tuple(spec.shape[1:]), max_rows)
    return _same_rows(out)


def v1_inputs(payload, inputs: Sequence, max_rows: int) -> dict[str, np.ndarray]:
    """The v1 ``instances`` of a model with several inputs: one object per row, its keys the input names."""
    want = [i.name for i in inputs]
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise limits.RequestError(
            'a v1 request must be a JSON object like {"instances": [{'
            + ", ".join(f'"{n}": [...]' for n in want)
            + "}, ...]}"
        )
    instances = payload["instances"]
    limits.check_rows(len(instances), max_rows, "'instances'")
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or set(instance) != set(want):
            got = sorted(map(str, instance)) if isinstance(instance, dict) else type(instance).__name__
            raise limits.RequestError(f"instances[{i}] must be an object with the model's inputs {want}, got {got}")
    out = {}
    for spec in inputs:
        column = {"instances": [instance[spec.name] for instance in instances]}
        out[spec.name] = limits.v1_instances(column, tuple(spec.shape[1:]), max_rows)
    return _same_rows(out)


def _same_rows(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    counts = {n: len(v) for n, v in values.items()}
    if len(set(counts.values())) > 1:
        raise limits.RequestError(f"every input must have as many rows, got {counts}")
    return values
