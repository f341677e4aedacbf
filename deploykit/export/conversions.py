"""What the exporters convert, made once per model and reused by its other variants (:mod:`.model_cache`).

- :func:`onnx_conversion`: the tf2onnx conversion of a model for one opset and output kind. Every ONNX variant
  (float32, float16, int8-dynamic without int8 preparation) quantizes its own copy of it.
- :func:`tflite_signature`: the traced signature function of a model for one output kind, and the SavedModel the
  TFLite converter lowers it through (:mod:`.tflite_saved`: saved without custom gradients). Every TFLite variant
  converts from it with its own converter settings.

The int8 variants of one model share one prepared copy (:func:`~.int8_prep.int8_source` reuses it when the weights,
samples and options match), so they share its conversion too, and so do the per-layer fallback's tries (``exclude``
is applied when quantizing, after the conversion). A model with more than :data:`~.convert.LEAN_ABOVE` of weights is
converted afresh each time, as before: a kept copy of ConvNeXtXLarge's proto would be 1.4 GB.
"""

from __future__ import annotations

import atexit
import contextlib
from dataclasses import dataclass
from pathlib import Path

from deploykit.core.task import OutputKind
from deploykit.export.model_cache import ModelCache
from deploykit.export.tflite_saved import SavedSignatures, concrete_function, save_signature, variables_only


def _copy_proto(proto):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


#: tf2onnx protos by (model, opset, output kind); each caller gets its own copy to quantize and edit.
ONNX = ModelCache(copy=_copy_proto)


def onnx_conversion(model, opset: int, kind: OutputKind, *, cache: bool = True):
    """:func:`~.convert.keras_to_onnx` of ``model``, from the cache while ``model`` is unchanged (``cache=False``:
    converted afresh, not stored: a model only this export will see)."""
    from deploykit.export.convert import keras_to_onnx

    if not _cacheable(model, cache):
        return keras_to_onnx(model, opset=opset, kind=kind)
    return ONNX.get(model, ("onnx", opset, kind), lambda: keras_to_onnx(model, opset=opset, kind=kind))


@dataclass(frozen=True)
class Signature:
    """What a TFLite converter is made from: the model as converted (recurrent layers unrolled), its traced
    function, the module holding its variables, and the SavedModel folder (None: the converter saves its own)."""

    model: object
    function: object
    module: object
    folder: Path | None


_FOLDERS = SavedSignatures()


def _drop(signature: Signature) -> None:
    if signature.folder is not None:
        _FOLDERS.remove(signature.folder)


#: TFLite signatures by (model, input shape, output kind); their SavedModel folders removed when evicted.
TFLITE = ModelCache(drop=_drop)


@contextlib.contextmanager
def tflite_signature(model, input_shape: tuple[int, ...], kind: OutputKind, *, cache: bool = True):
    """The :class:`Signature` of ``model`` for ``kind``: from the cache while ``model`` is unchanged, else traced
    and saved (``cache=False``, or a large model: its folder removed when the block ends)."""
    if _cacheable(model, cache):
        yield TFLITE.get(model, ("tflite", tuple(input_shape), kind), lambda: _signature(model, input_shape, kind))
        return
    made = _signature(model, input_shape, kind)
    try:
        yield made
    finally:
        _drop(made)


def _cacheable(model, cache: bool) -> bool:
    from deploykit.export.convert import LEAN_ABOVE, weight_bytes

    return cache and weight_bytes(model) <= LEAN_ABOVE


def _signature(model, input_shape: tuple[int, ...], kind: OutputKind) -> Signature:
    from deploykit.export.unroll import unrolled

    converted = unrolled(model)  # LSTM / GRU: builtin ops
    function = concrete_function(converted, input_shape, kind)
    module = variables_only(converted)
    folder = _FOLDERS.new_folder()
    if not save_signature(function, module, folder):
        _FOLDERS.remove(folder)
        folder = None
    return Signature(converted, function, module, folder)


def clear() -> None:
    """Forget every cached conversion and remove the SavedModel folders (at exit, and for tests)."""
    ONNX.clear()
    TFLITE.clear()
    _FOLDERS.close()


atexit.register(clear)
