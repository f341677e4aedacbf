"""The one way deploykit opens an onnxruntime session: CPU, quiet, threads, a one-line error naming the file.

onnxruntime gets the file's bytes as :func:`deploykit.onnx.file.model_bytes` checked them, never the path:
external data is contained in the model's folder and read into memory whatever the onnxruntime version.

Validation, the MC predictor, the pipeline's measurements, ``deploykit ensemble`` and the server all open
their sessions here. It imports onnxruntime only when called (the server imports nothing heavier).
"""

from __future__ import annotations

import os
from pathlib import Path

from deploykit.errors import ModelLoadError


def onnx_session(
    path: str | os.PathLike,
    *,
    threads: int | None = None,
    what: str = "",
    allow_spinning: bool = True,
    providers: list[str] | None = None,
    options=None,
):
    """An ``onnxruntime.InferenceSession`` of ``path``; ``what`` prefixes the error (``"MC model "``).

    Warnings are off unless ``options`` are given: a model whose input has an initializer-backed default
    (the MC model below opset 15) warns on every load, which says nothing to a deploykit user.
    ``allow_spinning=False`` keeps idle intra-op threads from burning CPUs other work shares (the server).
    """
    import onnxruntime as ort

    from deploykit.onnx.file import model_bytes

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{what}{path}: no such file")
    try:
        model = model_bytes(path)  # checked, external data contained and inlined (see deploykit.onnx.file)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{what}{exc}") from None
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return _opened(model, options, providers, f"{what}{path}")


def proto_session(proto, *, what: str, optimized: bool = True):
    """An ``onnxruntime.InferenceSession`` of an in-memory graph deploykit made from a file already checked
    (:func:`deploykit.onnx.file.load_onnx`), e.g. with intermediate tensors added as outputs; ``what`` names it in
    the error. ``optimized=False``: onnxruntime's graph optimizations off, so every tensor the graph names exists."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return _opened(proto.SerializeToString(), options, None, what)


def _opened(model: bytes, options, providers: list[str] | None, label: str):
    """The session of ``model``'s bytes, or one ModelLoadError naming ``label``."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{label}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None
