"""Loading and saving models.

:func:`load_model` loads tf_keras ``.keras``, ``.h5`` and SavedModel folders,
and Keras 3 ``.keras`` / ``.h5`` files (rebuilt layer by layer in tf_keras by
:mod:`deploykit.keras3`). Before anything is deserialized, the file's config is
read and checked against the layer support table: unsupported layers, nested
models, and Lambda layers or custom code (refused unless ``unsafe``) are
reported by name. Saving is atomic: a temporary file, then a rename.
"""

from __future__ import annotations

import enum
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deploykit.atomic import atomic_path
from deploykit.errors import ModelLoadError, UnsafeModelError, UnsupportedLayerError, UsageError
from deploykit.layers import LayerSupport, check_layers, support_for
from deploykit.log import quiet_native

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})


class ModelFormat(enum.Enum):
    KERAS = "keras"  # zip archive: metadata.json, config.json, model.weights.h5
    H5 = "h5"  # legacy HDF5 file with a model_config attribute
    SAVED_MODEL = "saved_model"  # folder with saved_model.pb and keras_metadata.pb


@dataclass(frozen=True)
class ModelFile:
    """A model file read without deserializing anything: its format, Keras version and config."""

    path: Path
    format: ModelFormat
    keras_version: str  # "" when the file does not say
    config: dict  # {"class_name": ..., "config": {...}}

    @property
    def is_keras3(self) -> bool:
        major = self.keras_version.split(".", 1)[0]
        return major.isdigit() and int(major) >= 3

    @property
    def model_class(self) -> str:
        return str(self.config.get("class_name", ""))

    def layer_configs(self) -> list[dict]:
        """The serialized layers of the (Sequential or functional) model."""
        inner = self.config.get("config")
        layers = inner.get("layers") if isinstance(inner, dict) else None
        if self.model_class not in _MODEL_CLASSES or not isinstance(layers, list):
            name = inner.get("name") if isinstance(inner, dict) else None
            raise UnsupportedLayerError(
                str(name or self.path.name), self.model_class or "unknown",
                "a subclassed model; deploykit reads Sequential and functional models",
            )
        return layers


def load_model(path: str | os.PathLike, *, unsafe: bool = False):
    """Load a model as a tf_keras model, checking its layers against the support table.

    Keras 3 files are rebuilt in tf_keras with identical weights, and their
    outputs checked against Keras 3's own within 1e-5. ``unsafe=True`` allows
    Lambda layers and custom objects (loading them can run code from the file).
    """
    model_file = read_model_file(path)
    if model_file.is_keras3:
        from deploykit.keras3 import import_keras3

        return import_keras3(model_file, unsafe=unsafe)
    check_model_config(model_file, unsafe=unsafe)
    return _load_tf_keras(model_file, unsafe)


def save_model(model, path: str | os.PathLike) -> Path:
    """Save a tf_keras model atomically; the format follows the suffix (.keras or .h5)."""
    from deploykit.backend import is_tf_keras_model

    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise UsageError(f"model path {path}: use a .keras or .h5 suffix")
    if not is_tf_keras_model(model):
        raise UsageError(f"model path {path}: deploykit saves tf_keras models, got {type(model).__module__}.{type(model).__name__}")
    with atomic_path(path) as tmp, warnings.catch_warnings(), quiet_native():  # tf_keras's compiled-metrics warning
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)  # .h5 was asked for
        model.save(tmp)
    return path


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Identify a model file or folder and read its config, without deserializing it."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model {path}: no such file or folder")
    if path.is_dir():
        return _read_saved_model(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == _HDF5_SIGNATURE:
        return _read_h5(path)
    if zipfile.is_zipfile(path):
        return _read_keras_zip(path)
    raise ModelLoadError(f"model {path}: not a model file (expected a .keras or .h5 file, or a SavedModel folder)")


def check_model_config(model_file: ModelFile, *, unsafe: bool = False) -> list[tuple[dict, LayerSupport]]:
    """Check every serialized layer against the support table, before deserializing anything.

    Raises :class:`UnsupportedLayerError` for a nested model, a custom layer
    class or a layer type deploykit does not handle, and
    :class:`UnsafeModelError` for a Lambda layer or custom code (a Python
    function, a custom registered object) unless ``unsafe``.
    Returns each layer config with its table entry.
    """
    checked = []
    for layer in model_file.layer_configs():
        kind = str(layer.get("class_name", ""))
        name = str(layer.get("config", {}).get("name", kind))
        if kind in _MODEL_CLASSES:
            raise UnsupportedLayerError(name, kind, "a nested model; rebuild it as one flat model without sub-models")
        if _is_custom(layer):
            raise UnsupportedLayerError(name, str(layer.get("registered_name") or kind), f"a custom layer class from {layer.get('module') or 'user code'}")
        try:
            entry = support_for(layer, unsafe=unsafe)
        except UnsafeModelError as exc:
            raise UnsafeModelError(f"model {model_file.path}: {exc}") from None
        if not entry.needs_unsafe and not unsafe:
            custom = _custom_code(layer.get("config", {}))
            if custom:
                raise UnsafeModelError(
                    f"model {model_file.path}: layer {name!r} of type {kind} uses custom code ({custom}); "
                    "loading it may run arbitrary code, so it is refused unless you trust the file and pass --unsafe (unsafe=True)"
                )
        checked.append((layer, entry))
    return checked


def _load_tf_keras(model_file: ModelFile, unsafe: bool):
    from deploykit.backend import is_tf_keras_model, keras

    path = model_file.path
    if model_file.format is ModelFormat.KERAS and path.suffix != ".keras":
        raise ModelLoadError(f"model {path}: a Keras archive must have the .keras suffix to be loaded; rename it")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:
        raise ModelLoadError(f"model {path}: tf_keras cannot load it ({_one_line(exc)})") from None
    if not is_tf_keras_model(model):
        raise ModelLoadError(f"model {path}: tf_keras gave a {type(model).__name__}, not a Keras model")
    check_layers(model.layers, unsafe=unsafe)
    return model


def _read_saved_model(path: Path) -> ModelFile:
    if not any((path / n).exists() for n in ("saved_model.pb", "saved_model.pbtxt")):
        raise ModelLoadError(f"model {path}: a folder, but not a SavedModel (no saved_model.pb)")
    meta = path / "keras_metadata.pb"
    if not meta.exists():
        raise ModelLoadError(
            f"model {path}: a SavedModel without Keras metadata (written by tf.saved_model.save or Keras 3 "
            "model.export()); tf_keras can only give a non-Keras object from it. Save the model with "
            "model.save('model.keras') instead"
        )
    import deploykit.backend  # noqa: F401  (TensorFlow must be set up before tf_keras is imported)
    from tf_keras.protobuf import saved_metadata_pb2

    proto = saved_metadata_pb2.SavedMetadata()
    try:
        proto.ParseFromString(meta.read_bytes())
        root = next(json.loads(n.metadata) for n in proto.nodes if n.node_path == "root")
    except Exception as exc:
        raise ModelLoadError(f"model {path}: unreadable keras_metadata.pb ({_one_line(exc)})") from None
    config = {"class_name": root.get("class_name", ""), "config": root.get("config") or {}}
    return ModelFile(path, ModelFormat.SAVED_MODEL, str(root.get("keras_version") or ""), config)


def _read_h5(path: Path) -> ModelFile:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get("model_config")
            version = fh.attrs.get("keras_version", "")
    except Exception as exc:
        raise ModelLoadError(f"model {path}: unreadable HDF5 file ({_one_line(exc)})") from None
    if raw is None:
        raise ModelLoadError(f"model {path}: an HDF5 file without a model config (weights only?); save the whole model")
    return ModelFile(path, ModelFormat.H5, _text(version), _json(path, _text(raw), "model_config"))


def _read_keras_zip(path: Path) -> ModelFile:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise ModelLoadError(f"model {path}: a zip archive, but not a Keras model (no config.json)")
            config = _json(path, zf.read("config.json").decode("utf-8"), "config.json")
            meta = _json(path, zf.read("metadata.json").decode("utf-8"), "metadata.json") if "metadata.json" in names else {}
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"model {path}: unreadable Keras archive ({_one_line(exc)})") from None
    version = meta.get("keras_version") or config.get("keras_version") or ""
    return ModelFile(path, ModelFormat.KERAS, str(version), config)


def _is_custom(obj: dict) -> bool:
    """True for a serialized object that is not Keras' own (a user class, function or lambda)."""
    kind = obj.get("class_name")
    module = obj.get("module")
    registered = obj.get("registered_name")
    if kind in ("function", "__lambda__"):
        return True
    if registered not in (None, kind):
        return True
    return module is not None and module != "keras" and not str(module).startswith("keras.")


def _custom_code(value, key: str = "") -> str:
    """Describe the first piece of custom code inside a layer config ('' when there is none)."""
    if key == "activation" and isinstance(value, str) and ">" in value:
        return f"custom activation {value!r}"
    if key == "activation" and isinstance(value, dict) and "class_name" not in value:
        return "activation given as Python code"
    if isinstance(value, dict):
        if "class_name" in value and _is_custom(value):
            return f"{key or 'object'}: {_describe(value)}"
        for k, v in value.items():
            found = _custom_code(v, str(k))
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _custom_code(v, key)
            if found:
                return found
    return ""


def _describe(obj: dict) -> str:
    if obj.get("class_name") == "function":
        return f"Python function {obj.get('config')!r}"
    if obj.get("class_name") == "__lambda__":
        return "a Python lambda"
    return f"custom object {obj.get('registered_name') or obj.get('class_name')!r} from {obj.get('module') or 'user code'}"


def _json(path: Path, text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ModelLoadError(f"model {path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"model {path}: {what} is not a Keras model config")
    return value


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"
