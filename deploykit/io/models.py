"""Loading and saving models.

:func:`load_model` loads tf_keras ``.keras`` and ``.h5`` files, and Keras 3
``.keras`` / ``.h5`` files (rebuilt layer by layer in tf_keras by
:mod:`deploykit.keras3.convert`). Before anything is deserialized,
:mod:`deploykit.core.modelfile` identifies the format by content, checks sizes, and
checks the config against the layer support table; the format it found is
then loaded explicitly (tf_keras never picks one from the suffix).

SavedModel folders are loaded only with ``unsafe``, as Keras 3's safe mode
refuses legacy formats: they hold traced TensorFlow graphs, and TensorFlow's
loader runs their resource initializers and revives their functions, which
can do anything (write files, for one). Saving is atomic: a temporary file,
then a rename.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from deploykit.atomic import atomic_path
from deploykit.core.layers import check_layers
from deploykit.core.modelfile import ModelFile, ModelFormat, check_model_config, read_model_file
from deploykit.core.tf_ops import tf_op_lines
from deploykit.errors import ModelLoadError, UnsafeModelError, UnsupportedLayerError, UsageError, one_line
from deploykit.io.flat import flat_model
from deploykit.log import quiet_native

__all__ = [
    "ModelFile",
    "ModelFormat",
    "check_model_config",
    "load_model",
    "read_model_file",
    "save_model",
    "save_model_like",
]


def load_model(path: str | os.PathLike, *, unsafe: bool = False, input_shapes: dict[str, tuple] | None = None):
    """Load a model as a tf_keras model, checking its layers against the support table.

    A model with several inputs or outputs comes back packed into one input and one output
    (:mod:`deploykit.core.multi_io`): every step works on it; saving unpacks it.

    Keras 3 files are rebuilt in tf_keras with identical weights, and their
    outputs checked against Keras 3's own within 1e-5. ``unsafe=True`` allows
    Lambda layers and SavedModel folders (loading them can run code from the file).

    A Keras 3 file's custom layers are read as what their ``call`` computes (:mod:`deploykit.keras3.inline`)
    when their code is given the Keras way (registered, or ``--custom-objects FILE.py``).

    An input with unsized axes besides the batch (a text model's ``Input(shape=(None,))``) is refused with
    :class:`~deploykit.errors.UnsizedInputError` unless ``input_shapes`` (input name -> per-sample shape, read off
    the data by :mod:`deploykit.io.lengths`) sizes it: the model comes back fixed at those sizes.
    """
    from deploykit.core import nested
    from deploykit.core.custom_dropout import custom_objects, read_as_builtin, remember

    model_file, recognized = read_as_builtin(read_model_file(path))  # the chapter's MCDropout is a Dropout
    inlined = None
    if model_file.is_keras3:  # custom layers whose code was given: read as what their call computes
        from deploykit.keras3.inline import inlined as inline_custom_layers

        inlined = inline_custom_layers(model_file, unsafe=unsafe, builtins=custom_objects(recognized))
        model_file = inlined.model_file if inlined is not None else model_file
    flattening = nested.flattening(model_file.config, keras3=model_file.is_keras3)  # nested models, augmentation
    flattening = ([inlined.line] if inlined is not None else []) + flattening  # said, and kept for the report
    nested.say(flattening)
    if model_file.is_keras3:
        from deploykit.keras3.convert import import_keras3

        objects = custom_objects(recognized)
        model = check_single_io(
            import_keras3(model_file, unsafe=unsafe, custom_objects=objects, input_shapes=input_shapes, inlined=inlined)
        )
    else:
        check_model_config(model_file, unsafe=unsafe)
        forced = tuple(r.layer for r in recognized if r.forced)  # Dropout(...)(x, training=True): rebuilt without it
        model = _load_tf_keras(model_file, unsafe, custom_objects(recognized), input_shapes, forced)
        calls = tf_op_lines(model_file.config)  # a tf.keras file's TensorFlow calls, said once they were read
        nested.say(calls)
        flattening += calls
    remember(model, recognized)
    nested.remember(model, flattening)
    return model


def save_model(model, path: str | os.PathLike) -> Path:
    """Save a tf_keras model atomically; the format follows the suffix (.keras or .h5)."""
    from deploykit.backend import is_tf_keras_model

    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise UsageError(f"model path {path}: use a .keras or .h5 suffix")
    if not is_tf_keras_model(model):
        raise UsageError(
            f"model path {path}: deploykit saves tf_keras models, got {type(model).__module__}.{type(model).__name__}"
        )
    from deploykit.core.multi_io_model import unpack_model

    model = unpack_model(model)  # a packed model is saved with its own inputs and outputs
    with atomic_path(path) as tmp, warnings.catch_warnings(), quiet_native():  # tf_keras's compiled-metrics warning
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)  # .h5 was asked for
        model.save(tmp)
    return path


def save_model_like(model, path: str | os.PathLike, keras3: bool) -> Path:
    """Save as the user's framework opens it: a Keras 3 file when the input was one, else tf_keras."""
    if keras3:
        from deploykit.core.multi_io_model import unpack_model
        from deploykit.keras3.convert import save_keras3

        return save_keras3(unpack_model(model), path)
    return save_model(model, path)


def _load_tf_keras(
    model_file: ModelFile,
    unsafe: bool,
    builtins: dict[str, str] | None = None,
    input_shapes: dict | None = None,
    forced: tuple[str, ...] = (),
):
    """Load with tf_keras; ``builtins`` maps recognized custom class names to the Keras layer read in their place,
    ``input_shapes`` sizes unsized input axes (:func:`_sized`), ``forced`` names the Dropout layers called with
    ``training=True`` (rebuilt from the file's rewritten config, :func:`deploykit.io.flat.flat_model`)."""
    from deploykit.backend import is_tf_keras_model, keras

    path = model_file.path
    if model_file.format is ModelFormat.SAVED_MODEL and not unsafe:
        raise UnsafeModelError(
            f"model {path}: a SavedModel folder holds traced TensorFlow graphs that TensorFlow runs while loading "
            "it (resource initializers, revived functions), so it is refused unless you trust it and pass --unsafe "
            "(unsafe=True); or load it once that way and save it as .keras"
        )
    try:
        from deploykit.core.custom_dropout import read_in_place

        objects = {name: getattr(keras.layers, base) for name, base in (builtins or {}).items()}
        with read_in_place(keras, objects):
            model = _LOADERS[model_file.format](path, unsafe)
    except Exception as exc:
        raise ModelLoadError(f"model {path}: tf_keras cannot load it ({one_line(exc)})") from None
    if not is_tf_keras_model(model):
        raise ModelLoadError(f"model {path}: tf_keras gave a {type(model).__name__}, not a Keras model")
    # nested models, augmentation, TensorFlow calls: one graph of built-in layers
    model = flat_model(model, model_file.config, f"model {path}", forced)
    check_layers(model.layers, unsafe=unsafe)
    return check_single_io(_sized(model, path, input_shapes))


def _sized(model, path, input_shapes: dict[str, tuple] | None):
    """The model with every input axis sized: itself when it is, else a copy whose inputs take ``input_shapes``.

    Every step (the graph reader, the exporters, packing) needs sized inputs; refusing here says what to do in one
    line, where a step would fail later with less to say. The copy shares the weights' values (float32 inputs, as
    the Keras 3 import builds them: an Embedding casts its ids).
    """
    from deploykit.backend import keras
    from deploykit.core.lengths import is_sized, sized_shapes

    names = [t.name.split(":")[0] for t in model.inputs]
    names = list(getattr(model, "input_names", None) or names)
    declared = {n: tuple(t.shape[1:]) for n, t in zip(names, model.inputs)}
    shapes = sized_shapes(path, declared, input_shapes)
    if all(is_sized(s) for s in declared.values()):
        return model
    tensors = [keras.Input(shape=shapes[n], name=n) for n in names]
    copy = keras.models.clone_model(model, input_tensors=tensors if len(tensors) > 1 else tensors[0])
    copy.set_weights(model.get_weights())
    return copy


def check_single_io(model):
    """The model as deploykit's steps take it: one input and one output, packed when it has several.

    deploykit's steps feed one array and read one: a model with several inputs or outputs is packed
    (:func:`deploykit.core.multi_io_model.pack_model`, exact); one the graph reader cannot pack is refused
    at load with one line naming its tensors, not failed deep inside a step.
    """
    from deploykit.core.multi_io_model import needs_packing, pack_model

    if not needs_packing(model):
        return model
    try:
        return pack_model(model)
    except UnsupportedLayerError as exc:
        if exc.layer_name == model.name:  # pack_model's own refusal names the model already
            raise
        names = ", ".join(t.name.split(":")[0] for t in [*model.inputs, *model.outputs])
        raise UnsupportedLayerError(
            model.name,
            type(model).__name__,
            f"has several inputs or outputs ({names}) and cannot be packed into one: {exc}",
        ) from None


def _load_keras_zip(path: Path, unsafe: bool):
    from tf_keras.src.saving import saving_lib

    import deploykit.backend  # noqa: F401  (TensorFlow must be set up before tf_keras is imported)

    return saving_lib.load_model(str(path), compile=False, safe_mode=not unsafe)


def _load_h5(path: Path, unsafe: bool):
    """Give tf_keras an open HDF5 file, so it reads HDF5 whatever else the bytes could be taken for."""
    import h5py
    from tf_keras.src.saving.legacy import save as legacy

    import deploykit.backend  # noqa: F401

    with h5py.File(path, "r") as fh:
        return legacy.load_model(fh, compile=False)


def _load_saved_model(path: Path, unsafe: bool):
    from tf_keras.src.saving.legacy import save as legacy

    import deploykit.backend  # noqa: F401

    return legacy.load_model(str(path), compile=False)


#: One explicit tf_keras loader per format found by deploykit.core.modelfile.
_LOADERS = {ModelFormat.KERAS: _load_keras_zip, ModelFormat.H5: _load_h5, ModelFormat.SAVED_MODEL: _load_saved_model}
