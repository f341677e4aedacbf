"""The per-layer support table: what each layer type is to every deploykit step.

One table instead of ``isinstance`` chains scattered through the steps: the
fold, sparsity, Keras 3 import, export and MC Dropout code all ask
:func:`support_for` what a layer is and what may be done with it.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass

from deploykit.errors import UnsafeModelError, UnsupportedLayerError


class Role(enum.Enum):
    INPUT = "input"  # InputLayer: no computation
    RESHAPE = "reshape"  # Flatten, Reshape: moves values, no arithmetic
    DENSE = "dense"  # affine map (+ optional activation): folds into, prunes, compacts
    BATCHNORM = "batchnorm"  # per-feature affine at inference: folds away
    NORMALIZATION = "normalization"  # input standardization: per-feature affine, folds away
    DROPOUT = "dropout"  # identity at inference; active under MC Dropout
    ACTIVATION = "activation"  # element-wise non-linearity
    OPAQUE = "opaque"  # arbitrary code (Lambda): only with unsafe loading, never folded through


@dataclass(frozen=True)
class LayerSupport:
    """What deploykit may do with one layer type."""

    role: Role
    prunable: bool = False  # TF-MOT magnitude pruning applies to its kernel
    folds_away: bool = False  # can be folded into a neighbouring Dense
    identity_at_inference: bool = False  # a fold may pass through it
    keras3_import: bool = True  # rebuilt from a Keras 3 file by deploykit.io
    needs_unsafe: bool = False  # loading it may run arbitrary code


SUPPORT: dict[str, LayerSupport] = {
    "InputLayer": LayerSupport(Role.INPUT, identity_at_inference=True),
    "Flatten": LayerSupport(Role.RESHAPE),
    "Reshape": LayerSupport(Role.RESHAPE),
    "Dense": LayerSupport(Role.DENSE, prunable=True),
    "BatchNormalization": LayerSupport(Role.BATCHNORM, folds_away=True),
    "Normalization": LayerSupport(Role.NORMALIZATION, folds_away=True),
    "Dropout": LayerSupport(Role.DROPOUT, identity_at_inference=True),
    "AlphaDropout": LayerSupport(Role.DROPOUT, identity_at_inference=True),
    "Activation": LayerSupport(Role.ACTIVATION),
    "LeakyReLU": LayerSupport(Role.ACTIVATION),
    "PReLU": LayerSupport(Role.ACTIVATION),
    "ELU": LayerSupport(Role.ACTIVATION),
    "ReLU": LayerSupport(Role.ACTIVATION),
    "Softmax": LayerSupport(Role.ACTIVATION),
    "Lambda": LayerSupport(Role.OPAQUE, keras3_import=False, needs_unsafe=True),
}

#: The Keras class names a tf_keras pruning wrapper may hold.
PRUNABLE = frozenset(name for name, s in SUPPORT.items() if s.prunable)
UnsupportedLayerError.supported = f"dense networks ({', '.join(n for n, s in SUPPORT.items() if not s.needs_unsafe)})"


def layer_type(layer: object) -> str:
    """The Keras class name of a layer object, or of a config dict's ``class_name``."""
    if isinstance(layer, dict):
        return str(layer.get("class_name", ""))
    cls = type(layer)
    if cls.__name__ in SUPPORT and not _is_keras_class(cls):  # a look-alike: a custom class named e.g. "Dense"
        return f"{cls.__module__}.{cls.__qualname__}"
    return cls.__name__


def _is_keras_class(cls: type) -> bool:
    """True when ``cls`` is the very class tf_keras (or Keras 3) exports under its name, not one named the same."""
    for package in ("tf_keras", "keras"):
        module = sys.modules.get(package)
        if module is not None and getattr(getattr(module, "layers", None), cls.__name__, None) is cls:
            return True
    return False


def support_for(layer: object, *, unsafe: bool = False) -> LayerSupport:
    """The table entry for ``layer`` (a layer object or a serialized config).

    Raises :class:`UnsupportedLayerError` for a type not in the table, and
    :class:`UnsafeModelError` for a layer that runs arbitrary code unless
    ``unsafe`` is true.
    """
    kind = layer_type(layer)
    name = layer.get("config", {}).get("name", kind) if isinstance(layer, dict) else getattr(layer, "name", kind)
    entry = SUPPORT.get(kind)
    if entry is None:
        raise UnsupportedLayerError(str(name), kind)
    if entry.needs_unsafe and not unsafe:
        raise UnsafeModelError(
            f"layer {name!r} of type {kind} runs arbitrary code; loading it is refused "
            "unless you trust the file and pass --unsafe (unsafe=True)"
        )
    return entry


def check_layers(layers, *, unsafe: bool = False) -> list[LayerSupport]:
    """Check every layer (objects or configs) against the table; return their entries."""
    return [support_for(layer, unsafe=unsafe) for layer in layers]
