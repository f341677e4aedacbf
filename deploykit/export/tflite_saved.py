"""The SavedModel the TFLite converter lowers a concrete function through, saved by deploykit: once, lean.

``TFLiteConverter.from_concrete_functions(funcs, module).convert()`` first saves ``module`` with the function as
its signature into a temporary SavedModel, loads it back and converts that. Two costs of that save are not needed:

- it keeps the custom gradients of every ``tf.custom_gradient`` op (its own ``SaveOptions`` leave
  ``experimental_custom_gradients`` on): a swish model (EfficientNet) traces and serializes a gradient function per
  activation, which inference never runs. EfficientNetB0's float32 conversion took 9.2 / 9.5 CPU s without them
  against 14.1 / 13.1 with, and the .tflite was byte-identical;
- it runs again for every variant (float32, float16, int8-weights...) of the same model.

:func:`lowered` saves the SavedModel here, without the custom gradients, and hands it to the converter in place of
the converter's own save (the rest of its step as TensorFlow runs it: parse, load, convert). The converter object is
still the concrete-function converter, so the flatbuffer, conversion metadata included, is what it wrote before.
:class:`SavedSignatures` keeps one SavedModel per (model, output kind) for the variants of one export
(:mod:`deploykit.export.model_cache` says when an entry may be reused).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from deploykit.core.task import OutputKind
from deploykit.export.convert import INPUT_NAME

#: The signature key the converter gives a single function (``signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY``).
_SIGNATURE_KEY = "serving_default"


def save_signature(fn, module, folder: Path) -> bool:
    """Save ``module`` with the concrete function ``fn`` as its serving signature into ``folder``, without custom
    gradients; False when TensorFlow refuses (the converter's own path then runs, as it falls back itself)."""
    from deploykit.backend import tf
    from deploykit.log import quiet_native

    options = tf.saved_model.SaveOptions(save_debug_info=True, experimental_custom_gradients=False)
    try:
        with quiet_native():  # TensorFlow's C++ log lines, as around the conversion
            tf.saved_model.save(module, str(folder), signatures={_SIGNATURE_KEY: fn}, options=options)
    except Exception:  # noqa: BLE001  (as the converter: a save that fails means its frozen-graph path)
        return False
    return True


def lowered(converter, folder: Path) -> None:
    """Make ``converter`` (from :func:`from_concrete_functions`) lower through the SavedModel in ``folder`` instead of
    saving its own: the converter's ``_convert_concrete_functions_to_saved_model`` minus the save.

    A TensorFlow whose converter lacks that step keeps its own path (same result, slower).
    """
    if not hasattr(converter, "_convert_concrete_functions_to_saved_model"):
        return

    def lower(output_dir):  # noqa: ARG001  (the converter's temporary folder stays empty)
        from tensorflow.python.saved_model.load import load

        converter.saved_model_dir = str(folder)
        converter._saved_model_tags = {"serve"}
        converter._saved_model_exported_names = [_SIGNATURE_KEY]
        converter._parse_saved_model_args(always_enable_saved_model_import=True)
        if not converter.saved_model_dir:
            return None, None, None
        graph_def, inputs, outputs = converter._load_saved_model(converter.saved_model_dir, converter._saved_model_tags)
        converter._trackable_obj = load(converter.saved_model_dir, converter._saved_model_tags)
        return graph_def, inputs, outputs

    converter._convert_concrete_functions_to_saved_model = lower


class SavedSignatures:
    """SavedModel folders by key, in one temporary folder removed by :meth:`close` (an evicted entry's at once)."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._count = 0

    def new_folder(self) -> Path:
        """A fresh, not yet existing folder for one SavedModel."""
        with self._lock:
            if self._root is None or not self._root.exists() or self._pid != os.getpid():
                self._root, self._pid = Path(tempfile.mkdtemp(prefix="deploykit-tflite-")), os.getpid()
            self._count += 1
            return self._root / f"saved{self._count}"

    def remove(self, folder: Path) -> None:
        """Remove ``folder``: only in the process that made it (a forked child leaves its parent's alone)."""
        if self._pid == os.getpid() and folder.parent == self._root:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            if self._root is not None and self._pid == os.getpid():
                shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


def _signature(model, kind: OutputKind):
    """The converted function's outputs, by name: the model's output, and the probabilities computed from it for a
    logits classifier; a binary head's two-class probabilities (``TaskSpec.tf_probabilities``)."""
    from deploykit.core.taskspec import spec_of

    spec = spec_of(kind)
    names = spec.served_outputs

    def outputs(x):
        out = model(x, training=False)
        if len(names) == 2:
            return {names[0]: out, names[1]: spec.tf_probabilities(out)}
        return {names[0]: spec.tf_probabilities(out) if spec.binary else out}

    return outputs


def concrete_function(model, input_shape, kind: OutputKind):
    """The converted function of ``model`` traced for a dynamic batch: its outputs named for ``kind``."""
    from deploykit.backend import tf
    from deploykit.core.multi_io_model import packing_of, tflite_function

    packing = packing_of(model)  # several inputs / outputs: one named signature tensor each
    if packing is None:
        fn = tf.function(
            _signature(model, kind), input_signature=[tf.TensorSpec((None, *input_shape), tf.float32, name=INPUT_NAME)]
        )
    else:
        fn = tf.function(*tflite_function(model, packing, _signature(model, kind), INPUT_NAME))
    return fn.get_concrete_function()


def variables_only(model):
    """A bare ``tf.Module`` tracking ``model``'s variables: the object the converter saves the function with.

    The converter lowers a concrete function through a SavedModel of the object it is given (saved, then loaded
    back). Given the tf_keras model itself, that save runs tf_keras's legacy SavedModel serialization, which
    traces every layer's call functions: 75 s of MobileNetV3Small's 84-s float32 conversion on this machine, and
    it grows with the layer count. The converted function only reads the variables, so a module holding them
    gives the same flatbuffer, byte for byte, from a save that traces nothing (6 CPU seconds instead of 33).
    """
    from deploykit.backend import tf

    module = tf.Module(name="deploykit_variables")
    module.kept = list(model.variables)
    return module
