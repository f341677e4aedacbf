"""Model files read without deserializing anything: format, sizes and config, checked before loading.

The format is decided here from the content, and the loader (deploykit.io.models)
then loads that format explicitly, so the file that was checked is the file
that is loaded. A file that is both HDF5 and a zip archive (a polyglot: each
reader would see a different model), or whose suffix disagrees with its
content, is refused. Sizes are checked on what the file declares (zip members,
JSON configs, the weights the layers declare) before anything is inflated
(deploykit.limits). The config is then checked against the layer support
table, nested models layer by layer (deploykit.core.nested): unsupported layers,
Lambda layers and custom code are reported by name.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import math
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deploykit.core.layers import LayerSupport, support_for
from deploykit.core.nested import MODEL_CLASSES, Nesting, flatten
from deploykit.core.tf_ops import TF_OP_LAYERS
from deploykit.errors import ModelLoadError, UnsafeModelError, UnsupportedLayerError, one_line
from deploykit.files import read_bytes, regular_file
from deploykit.limits import MODEL_BYTES, MODEL_CONFIG_BYTES

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_KERAS_JSON = ("config.json", "metadata.json")


class ModelFormat(enum.Enum):
    KERAS = "keras"  # zip archive: metadata.json, config.json, model.weights.h5
    H5 = "h5"  # legacy HDF5 file with a model_config attribute
    SAVED_MODEL = "saved_model"  # folder with saved_model.pb and keras_metadata.pb


#: The suffix each file format must carry (a SavedModel is a folder).
SUFFIXES = {".keras": ModelFormat.KERAS, ".h5": ModelFormat.H5, ".hdf5": ModelFormat.H5}


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
        if self.model_class not in MODEL_CLASSES or not isinstance(layers, list):
            name = inner.get("name") if isinstance(inner, dict) else None
            raise UnsupportedLayerError(
                str(name or self.path.name),
                self.model_class or "unknown",
                "a subclassed model; deploykit reads Sequential and functional models",
            )
        return layers


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Identify a model file or folder by its content and read its config, without deserializing it."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model {path}: no such file or folder")
    if path.is_dir():
        return _read_saved_model(path)
    regular_file(path, "model", ModelLoadError, MODEL_BYTES)  # /dev/zero or a FIFO named model.keras never ends
    is_h5, is_zip = has_hdf5_signature(path), _is_zip(path)
    if is_h5 and is_zip:
        raise ModelLoadError(
            f"model {path}: both an HDF5 file and a zip archive (a polyglot file, each reader would "
            "see a different model); refused. Save the model again with model.save()"
        )
    if is_h5:
        _check_suffix(path, ModelFormat.H5)
        return _read_h5(path)
    if is_zip:
        return _read_keras_zip(path)
    raise ModelLoadError(f"model {path}: not a model file (expected a .keras or .h5 file, or a SavedModel folder)")


def has_hdf5_signature(path: Path) -> bool:
    """True when an HDF5 superblock signature is where HDF5 looks for one: offset 0, 512, 1024, 2048..."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def _is_zip(path: Path) -> bool:
    """True when the file holds a zip archive with a readable directory of at least one member.

    Stricter than zipfile.is_zipfile, which only looks for an end-of-directory signature in the last
    64 KiB: 4 random bytes of an HDF5 file's weights would be taken for a zip one time in ~65,000.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _check_suffix(path: Path, found: ModelFormat) -> None:
    """Refuse a suffix that names another format than the content: the loader must not be the one to choose."""
    named = SUFFIXES.get(path.suffix.lower())
    if named is not found:
        want = " or ".join(s for s, f in SUFFIXES.items() if f is found)
        said = (
            f"the suffix {path.suffix} says {named.value}"
            if named
            else f"the suffix {path.suffix or '(none)'} is not a model's"
        )
        raise ModelLoadError(f"model {path}: the content is a {found.value} file but {said}; rename it with {want}")


def check_model_config(model_file: ModelFile, *, unsafe: bool = False) -> list[tuple[dict, LayerSupport]]:
    """Check every serialized layer against the support table, before deserializing anything.

    Nested models are checked layer by layer, as :mod:`deploykit.core.nested` flattens them. Raises
    :class:`UnsupportedLayerError` for a nested model it cannot flatten, a custom layer
    class or a layer type deploykit does not handle, and
    :class:`UnsafeModelError` for a Lambda layer or custom code (a Python
    function, a custom registered object) unless ``unsafe``.
    Returns each layer config with its table entry.
    """
    model_file.layer_configs()  # refuses a subclassed model by name
    model_file = dataclasses.replace(
        model_file, config=flatten(copy.deepcopy(model_file.config), Nesting(), keras3=model_file.is_keras3)
    )
    checked = []
    for layer in model_file.layer_configs():  # nested models' layers included, as the loader flattens them
        kind = str(layer.get("class_name", ""))
        name = str(layer.get("config", {}).get("name", kind))
        if is_custom(layer):
            raise UnsupportedLayerError(
                name,
                str(layer.get("registered_name") or kind),
                f"a custom layer class from {layer.get('module') or 'user code'} (deploykit reads custom classes "
                "from Keras 3 files, given their code with --custom-objects FILE.py)",
            )
        try:
            entry = support_for(layer, unsafe=unsafe)
        except UnsafeModelError as exc:
            raise UnsafeModelError(f"model {model_file.path}: {exc}") from None
        names = function_names(layer.get("config")) if not model_file.is_keras3 else []
        missing = [n for n in names if not _given({"class_name": "function", "config": n})]
        if missing:  # tf_keras looks a function up by its name: trusting the file (--unsafe) does not give it
            raise UnsupportedLayerError(
                name,
                kind,
                f"it computes with the custom function {missing[0]!r}, and its code was not given: pass the Python "
                "file defining it with --custom-objects FILE.py (API: register it in tf_keras' custom objects)",
            )
        if not entry.needs_unsafe and not unsafe:
            custom = _custom_code(layer.get("config", {}))
            if custom:
                raise UnsafeModelError(
                    f"model {model_file.path}: layer {name!r} of type {kind} uses custom code ({custom}); "
                    "loading it may run arbitrary code, so it is refused unless you trust the file "
                    "and pass --unsafe (unsafe=True)"
                )
        checked.append((layer, entry))
    MODEL_BYTES.check(
        model_file.path, declared_weight_bytes(model_file), "the layer config", on_disk=bytes_on_disk(model_file.path)
    )
    return checked


def bytes_on_disk(path: Path) -> int:
    """The bytes a model file holds, or a SavedModel folder's regular files (its weights), links not followed:
    what a limit on declared sizes may grow with."""
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size if path.is_file() else 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if file.is_file() and not file.is_symlink():
                total += file.stat().st_size
    return total


def declared_weight_bytes(model_file: ModelFile) -> int:
    """Float32 bytes of the Dense kernels and biases the config declares (a huge ``units`` is a memory bomb)."""
    features, total = None, 0
    for layer in model_file.layer_configs():
        config = layer.get("config") or {}
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        if isinstance(shape, (list, tuple)) and all(isinstance(d, int) for d in shape[1:]):
            features = math.prod(shape[1:])
        units = config.get("units")
        if layer.get("class_name") == "Dense" and isinstance(units, int) and units > 0:
            total += ((features or 1) + 1) * units * 4
            features = units
    return total


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
    raw = read_bytes(meta, "model", ModelLoadError, MODEL_CONFIG_BYTES)  # a regular file: /dev/zero never ends
    from tf_keras.protobuf import saved_metadata_pb2

    import deploykit.backend  # noqa: F401  (TensorFlow must be set up before tf_keras is imported)

    proto = saved_metadata_pb2.SavedMetadata()
    try:
        proto.ParseFromString(raw)
        root = next(json.loads(n.metadata) for n in proto.nodes if n.node_path == "root")
    except Exception as exc:
        raise ModelLoadError(f"model {path}: unreadable keras_metadata.pb ({one_line(exc)})") from None
    config = {"class_name": root.get("class_name", ""), "config": root.get("config") or {}}
    return ModelFile(path, ModelFormat.SAVED_MODEL, str(root.get("keras_version") or ""), config)


def _read_h5(path: Path) -> ModelFile:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            if "model_config" in fh.attrs:
                MODEL_CONFIG_BYTES.check(path, fh.attrs.get_id("model_config").get_storage_size(), "model_config")
            raw = fh.attrs.get("model_config")
            version = fh.attrs.get("keras_version", "")
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"model {path}: unreadable HDF5 file ({one_line(exc)})") from None
    if raw is None:
        raise ModelLoadError(f"model {path}: an HDF5 file without a model config (weights only?); save the whole model")
    return ModelFile(path, ModelFormat.H5, _text(version), _json(path, _text(raw), "model_config"))


def _read_keras_zip(path: Path) -> ModelFile:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename: info for info in zf.infolist()}
            if "config.json" not in members:
                raise ModelLoadError(f"model {path}: a zip archive, but not a Keras model (no config.json)")
            _check_suffix(path, ModelFormat.KERAS)
            for name in _KERAS_JSON:
                if name in members:
                    MODEL_CONFIG_BYTES.check(path, members[name].file_size, name)
            MODEL_BYTES.check(
                path,
                sum(info.file_size for info in members.values()),
                "the Keras archive (uncompressed)",
                on_disk=path.stat().st_size,
            )
            config = _json(path, _member(zf, members["config.json"]).decode("utf-8"), "config.json")
            meta = (
                _json(path, _member(zf, members["metadata.json"]).decode("utf-8"), "metadata.json")
                if "metadata.json" in members
                else {}
            )
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, EOFError) as exc:
        raise ModelLoadError(f"model {path}: unreadable Keras archive ({one_line(exc)})") from None
    version = meta.get("keras_version") or config.get("keras_version") or ""
    return ModelFile(path, ModelFormat.KERAS, str(version), config)


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A zip member's bytes, inflated in 1 MiB steps up to the size the directory declares (checked before).

    ``zf.read`` inflates up to 2 GiB in one step whatever the directory says; here a member that holds more than
    it declares costs its declared size, then fails its CRC check.
    """
    parts, left = [], info.file_size
    with zf.open(info) as fh:
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
    return b"".join(parts)


#: TensorFlow's own initializer classes (``tf.random_normal_initializer(0., 0.02)`` in TensorFlow's segmentation and
#: pix2pix tutorials), which tf_keras saves under their TensorFlow module: TensorFlow's code, only run to fill
#: weights the file then sets.
TF_INITIALIZERS = (
    "tensorflow.python.ops.init_ops_v2",
    frozenset(
        {
            "Constant",
            "GlorotNormal",
            "GlorotUniform",
            "Identity",
            "Ones",
            "Orthogonal",
            "RandomNormal",
            "RandomUniform",
            "TruncatedNormal",
            "VarianceScaling",
            "Zeros",
        }
    ),
)


def is_custom(obj: dict) -> bool:
    """True for a serialized object that is not Keras' own (a user class, function or lambda); TensorFlow's own
    initializers and calls (:data:`TF_INITIALIZERS`, :mod:`deploykit.core.tf_ops`) are not."""
    kind = obj.get("class_name")
    module = obj.get("module")
    registered = obj.get("registered_name")
    if kind in ("function", "__lambda__"):
        return True
    if kind in TF_OP_LAYERS and str(module or "tf_keras.").startswith("tf_keras."):  # a TensorFlow call, by name
        return False
    if module == TF_INITIALIZERS[0] and kind in TF_INITIALIZERS[1] and registered in (None, kind):
        return False
    if registered not in (None, kind):
        return True
    return module is not None and module != "keras" and not str(module).startswith("keras.")


def _given(obj: dict) -> bool:
    """A serialized function (``{"class_name": "function", "config": NAME}``) whose code the user gave
    (``--custom-objects``, or a custom_object_scope: registered in tf_keras under that name): code the user trusts,
    as a Keras 3 file's given classes are."""
    tf_keras = sys.modules.get("tf_keras")
    name = obj.get("config")
    if obj.get("class_name") != "function" or tf_keras is None or not isinstance(name, str):
        return False
    return tf_keras.saving.get_registered_object(name) is not None  # a custom_object_scope's too


def function_names(config) -> list[str]:
    """The registered names of the functions a layer's own config holds (``activation=my_activation``); a nested
    model's layers are not its own (each is read on its own). Walked without recursion."""
    found, stack = [], [config]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if value.get("class_name") == "function" and isinstance(value.get("config"), str):
                found.append(value["config"])
            else:
                stack += [v for k, v in value.items() if k != "layers"]
        elif isinstance(value, list):
            stack += value
    return found


def _custom_code(value, key: str = "") -> str:
    """Describe the first piece of custom code inside a layer config ('' when there is none; a function whose code
    was given is none)."""
    if key == "activation" and isinstance(value, str) and ">" in value:
        return f"custom activation {value!r}"
    if key == "activation" and isinstance(value, dict) and "class_name" not in value:
        return "activation given as Python code"
    if isinstance(value, dict):
        if "class_name" in value and is_custom(value) and not _given(value):
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
    return (
        f"custom object {obj.get('registered_name') or obj.get('class_name')!r} from {obj.get('module') or 'user code'}"
    )


def _json(path: Path, text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ModelLoadError(f"model {path}: {what} is not valid JSON ({exc})") from None
    except RecursionError:  # thousands of nested brackets: no model nests so deep
        raise ModelLoadError(f"model {path}: {what} nests deeper than Python's JSON reader goes") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"model {path}: {what} is not a Keras model config")
    return value


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
