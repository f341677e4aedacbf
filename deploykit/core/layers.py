"""The per-layer support table: what each layer type is to every deploykit step.

One table instead of ``isinstance`` chains scattered through the steps: the
fold, sparsity, compact, Keras 3 import and MC Dropout code all ask
:func:`support_for` what a layer is and what may be done with it (one entry
per Keras class, as tf2onnx and onnxruntime's quantizer register one handler
per op). A built-in Keras layer the table does not know is not refused: it
gets :data:`UNKNOWN` (export through the converters works; the steps that
need to understand the layer skip with a reason). Only custom code (Lambda,
classes from outside Keras) is refused without ``unsafe``.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass

from deploykit.core.tf_ops import TF_OP_LAYERS, tf_op_refusal
from deploykit.errors import UnsafeModelError, UnsupportedLayerError


class Role(enum.Enum):
    INPUT = "input"  # InputLayer: no computation
    RESHAPE = "reshape"  # Flatten, Reshape: moves values, no arithmetic
    DENSE = "dense"  # affine map (+ optional activation): folds into, prunes, compacts
    CONV = "conv"  # convolution (+ optional activation): folds into, prunes
    BATCHNORM = "batchnorm"  # per-feature affine at inference: folds away
    NORMALIZATION = "normalization"  # input standardization: per-feature affine, folds away
    RESCALING = "rescaling"  # x * scale + offset (scalars): folds away
    DROPOUT = "dropout"  # identity at inference; active under MC Dropout
    ACTIVATION = "activation"  # element-wise non-linearity
    POOLING = "pooling"  # average / max over windows or over all positions
    MERGE = "merge"  # Add, Concatenate, Multiply, Subtract, Maximum...: several inputs
    PADDING = "padding"  # ZeroPadding: adds zeros at the borders
    LAYERNORM = "layernorm"  # per-sample normalization: nothing folds through it
    EMBEDDING = "embedding"  # integer ids to vectors
    RECURRENT = "recurrent"  # LSTM, GRU, SimpleRNN (and Bidirectional): a loop over the time axis
    OTHER = "other"  # a built-in Keras layer outside the table: exported, never folded through or sampled
    OPAQUE = "opaque"  # arbitrary code (Lambda, custom classes): only with unsafe loading


class Absorb(enum.Enum):
    """Where a per-channel affine (a BatchNorm) can be merged into a layer, exactly."""

    NONE = "none"
    OUTPUTS = "outputs"  # y = f(x) * s + t: scale the output channels of the kernel, shift the bias
    BOTH = "both"  # also inputs: x * s + t before the layer (a conv only with valid padding)


class Carry(enum.Enum):
    """How a per-channel affine passes through a layer on its way forward to a kernel."""

    STOP = "stop"
    IDENTITY = "identity"  # inference identity (dropout)
    RESHAPE = "reshape"  # the per-element map moves with the values
    AVERAGE = "average"  # average pooling commutes with a per-channel affine
    MAX_POSITIVE = "max_positive"  # max pooling commutes when every scale is positive


class KernelLayout(enum.Enum):
    """How a kernel's axes hold the layer's output units: what a fold scales, compact removes and int8 clips."""

    DENSE = "dense"  # [inputs, units]
    CONV = "conv"  # [taps..., input channels, filters]: one output channel per last-axis column
    DEPTHWISE = "depthwise"  # [taps..., input channels, multiplier]: output channel c * multiplier + m (grouped)
    RECURRENT = "recurrent"  # a cell's [inputs, gates x units]: pruned, never scaled or cut per unit
    TRANSPOSED = "transposed"  # [taps..., filters, input channels] (Conv2DTranspose): one output channel per row


@dataclass(frozen=True)
class Kernel:
    """The weight that makes a layer's output units, named as TF-MOT's ``prune_registry`` names it."""

    name: str  # the layer attribute (kernel, depthwise_kernel, pointwise_kernel); on the cell for an RNN
    index: int  # its index in ``get_weights()``; the bias (when used) follows it
    layout: KernelLayout

    @property
    def reads_input(self) -> bool:
        """Applied to the layer's input itself (SeparableConv2D's pointwise kernel reads its depthwise output)."""
        return self.index == 0

    @property
    def units_key(self) -> str | None:
        """The config key holding how many output units the kernel makes (compact rewrites it)."""
        return {KernelLayout.DENSE: "units", KernelLayout.CONV: "filters"}.get(self.layout)

    def units(self, shape: tuple[int, ...]) -> int:
        """Output units of a kernel of this shape (a depthwise kernel's: channels x multiplier)."""
        if self.layout is KernelLayout.DEPTHWISE:
            return int(shape[-2] * shape[-1])
        return int(shape[-2]) if self.layout is KernelLayout.TRANSPOSED else int(shape[-1])


#: Keras 3 preprocessing layers whose saved call records ``training=True`` (Keras 3's data layers do, whatever the
#: model's code said) although they compute the same in training and at inference: the flag is read as absent.
TRAINING_NEUTRAL = frozenset({"Resizing", "CenterCrop"})


@dataclass(frozen=True)
class LayerSupport:
    """What deploykit may do with one layer type."""

    role: Role
    prunable: bool = False  # TF-MOT magnitude pruning applies to its kernel
    folds_away: bool = False  # a per-channel affine that can be folded into a neighbouring kernel
    identity_at_inference: bool = False  # a fold may pass through it unchanged
    keras3_import: bool = True  # rebuilt from a Keras 3 file by deploykit.keras3.convert
    needs_unsafe: bool = False  # loading it may run arbitrary code
    absorbs: Absorb = Absorb.NONE  # fold: BOTH also takes a map on its inputs (fold_forward)
    carries: Carry = Carry.STOP
    mc: bool = False  # the MC Dropout graph can emit it (deploykit.uncertainty.mc_layers.emit asks)
    sampled: bool = False  # random under MC Dropout: the MC graph samples it and everything downstream
    compactable: bool = False  # compact (sparsity.dead_neurons) may remove its dead output units
    #: The weight that makes its output units and that TF-MOT prunes (SeparableConv2D's: its pointwise kernel).
    kernel: Kernel | None = None
    #: Called on several tensors as separate arguments (attention's query, value and key), not on one list.
    tensor_args: bool = False
    #: Why no step can take it (refused by name wherever it is read); "" when it can.
    refused: str = ""

    @property
    def merges(self) -> bool:
        return self.role is Role.MERGE

    @property
    def pruned_kernel(self) -> tuple[str, int]:
        """(attribute name, index in ``get_weights()``) of the weight TF-MOT prunes."""
        return (self.kernel.name, self.kernel.index) if self.kernel else ("kernel", 0)


def _entry(role: Role, **kw) -> LayerSupport:
    return LayerSupport(role, mc=kw.pop("mc", True), **kw)


#: Why a layer reading strings is refused, and what to give instead.
_STRINGS = (
    "deploykit's artifacts (ONNX, TFLite) take numbers: apply it to the data before the model and give deploykit "
    "the model that reads its output (the tutorials' `model`, not the `export_model` wrapping it)"
)
_ACTIVATION = _entry(Role.ACTIVATION)
_DROPOUT = _entry(Role.DROPOUT, identity_at_inference=True, carries=Carry.IDENTITY, sampled=True)
_CONV = _entry(
    Role.CONV, prunable=True, absorbs=Absorb.BOTH, compactable=True, kernel=Kernel("kernel", 0, KernelLayout.CONV)
)
_RNN = _entry(Role.RECURRENT, prunable=True, kernel=Kernel("kernel", 0, KernelLayout.RECURRENT))
#: Keras' recurrent layers (Bidirectional and TimeDistributed wrap them): options the two Keras differ in
#: (deploykit.keras3.rnn), unrolling (deploykit.export.unroll), a call's ``initial_state`` (deploykit.core.graph).
RECURRENT_LAYERS = frozenset({"LSTM", "GRU", "SimpleRNN"})
_AVG = _entry(Role.POOLING, carries=Carry.AVERAGE)
_MAX = _entry(Role.POOLING, carries=Carry.MAX_POSITIVE)

SUPPORT: dict[str, LayerSupport] = {
    "InputLayer": _entry(Role.INPUT, identity_at_inference=True, carries=Carry.IDENTITY),
    "Flatten": _entry(Role.RESHAPE, carries=Carry.RESHAPE),
    "Reshape": _entry(Role.RESHAPE, carries=Carry.RESHAPE),
    "Dense": _entry(
        Role.DENSE, prunable=True, absorbs=Absorb.BOTH, compactable=True, kernel=Kernel("kernel", 0, KernelLayout.DENSE)
    ),
    "Conv1D": _CONV,
    "Conv2D": _CONV,
    # TF-MOT's registry prunes SeparableConv2D's pointwise kernel; the depthwise kernel goes through PrunableLayer
    # (deploykit.sparsity.magnitude), as TF-MOT 0.8 registers DepthwiseConv2D with no prunable weight.
    "DepthwiseConv2D": _entry(
        Role.CONV, prunable=True, absorbs=Absorb.OUTPUTS, kernel=Kernel("depthwise_kernel", 0, KernelLayout.DEPTHWISE)
    ),
    "SeparableConv2D": _entry(
        Role.CONV, prunable=True, absorbs=Absorb.OUTPUTS, kernel=Kernel("pointwise_kernel", 1, KernelLayout.CONV)
    ),
    # An autoencoder's or U-Net's upsampling: TF-MOT's registry prunes its kernel, a BatchNorm after it folds per
    # output channel (its kernel's second to last axis); nothing folds forward into it or cuts its channels.
    "Conv2DTranspose": _entry(
        Role.CONV, prunable=True, absorbs=Absorb.OUTPUTS, kernel=Kernel("kernel", 0, KernelLayout.TRANSPOSED)
    ),
    "BatchNormalization": _entry(Role.BATCHNORM, folds_away=True),
    "Normalization": _entry(Role.NORMALIZATION, folds_away=True),
    "Rescaling": _entry(Role.RESCALING, folds_away=True),
    "Dropout": _DROPOUT,
    "AlphaDropout": _DROPOUT,
    "SpatialDropout1D": _DROPOUT,
    "SpatialDropout2D": _DROPOUT,
    "Activation": _ACTIVATION,
    "LeakyReLU": _ACTIVATION,
    "PReLU": _ACTIVATION,
    "ELU": _ACTIVATION,
    "ReLU": _ACTIVATION,
    "Softmax": _ACTIVATION,
    "MaxPooling1D": _MAX,
    "MaxPooling2D": _MAX,
    "AveragePooling1D": _AVG,
    "AveragePooling2D": _AVG,
    "GlobalMaxPooling1D": _MAX,
    "GlobalMaxPooling2D": _MAX,
    "GlobalAveragePooling1D": _AVG,
    "GlobalAveragePooling2D": _AVG,
    "Add": _entry(Role.MERGE),
    "Concatenate": _entry(Role.MERGE),
    "Multiply": _entry(Role.MERGE),
    "Subtract": _entry(Role.MERGE),
    "Maximum": _entry(Role.MERGE),
    "Minimum": _entry(Role.MERGE),
    "Average": _entry(Role.MERGE),
    "ZeroPadding1D": _entry(Role.PADDING),
    "ZeroPadding2D": _entry(Role.PADDING),
    "Cropping1D": _entry(Role.RESHAPE),  # cuts a model input out of the packed one (deploykit.core.multi_io_model)
    "LayerNormalization": _entry(Role.LAYERNORM),
    "UnitNormalization": _entry(Role.LAYERNORM),  # x / its L2 norm (tf.math.l2_normalize): an embedding's unit vector
    "Embedding": _entry(Role.EMBEDDING),
    # TF-MOT's registry prunes the cells' kernel and recurrent_kernel (not through Bidirectional); the MC graph
    # emits them as ONNX LSTM / GRU / RNN (deploykit.uncertainty.mc_rnn).
    "LSTM": _RNN,
    "GRU": _RNN,
    "SimpleRNN": _RNN,
    "Bidirectional": _entry(Role.RECURRENT),
    # Transformer blocks (keras.io's): exported by the converters (Einsum, Softmax), never pruned or folded through.
    "MultiHeadAttention": LayerSupport(Role.OTHER, tensor_args=True, mc=True),
    # Values moved, or a product of two tensors (what custom layers' ops.transpose / ops.matmul are read as): exported
    # by the converters and emitted by the MC graph, never folded through or pruned.
    "Permute": LayerSupport(Role.OTHER, mc=True),
    "Dot": LayerSupport(Role.OTHER, mc=True),
    "Lambda": LayerSupport(Role.OPAQUE, keras3_import=False, needs_unsafe=True),
    # Preprocessing that reads strings (the text tutorials' export_model): artifacts take numbers.
    "TextVectorization": LayerSupport(Role.OPAQUE, refused=f"turns strings into token ids; {_STRINGS}"),
    "StringLookup": LayerSupport(Role.OPAQUE, refused=f"looks strings up in a vocabulary; {_STRINGS}"),
    "Hashing": LayerSupport(Role.OPAQUE, refused=f"hashes strings or ids into bins; {_STRINGS}"),
}

#: Keras spells some classes twice (MaxPool2D is MaxPooling2D): alias -> table name.
ALIASES = {
    "MaxPool1D": "MaxPooling1D",
    "MaxPool2D": "MaxPooling2D",
    "AvgPool1D": "AveragePooling1D",
    "AvgPool2D": "AveragePooling2D",
    "GlobalMaxPool1D": "GlobalMaxPooling1D",
    "GlobalMaxPool2D": "GlobalMaxPooling2D",
    "GlobalAvgPool1D": "GlobalAveragePooling1D",
    "GlobalAvgPool2D": "GlobalAveragePooling2D",
    "Convolution1D": "Conv1D",
    "Convolution2D": "Conv2D",
    "Convolution2DTranspose": "Conv2DTranspose",
    "SeparableConvolution2D": "SeparableConv2D",
}
SUPPORT.update({alias: SUPPORT[name] for alias, name in ALIASES.items()})

#: A built-in Keras layer outside the table: exported by the converters, skipped by the other steps.
UNKNOWN = LayerSupport(Role.OTHER)
#: Code the table cannot vouch for (a custom class), allowed only with ``unsafe``.
CUSTOM = LayerSupport(Role.OPAQUE, keras3_import=False, needs_unsafe=True)

#: A TensorFlow call in a tf_keras file (:mod:`deploykit.core.tf_ops`): it names a function TensorFlow looks up, no
#: code from the file; :mod:`deploykit.io.tf_ops` rewrites it into built-in layers once the model is loaded.
TF_OP = LayerSupport(Role.OPAQUE, keras3_import=False)

#: The Keras class names a tf_keras pruning wrapper may hold.
PRUNABLE = frozenset(name for name, s in SUPPORT.items() if s.prunable)

#: Activation names (Keras 3 and tf_keras) the MC graph and the fold understand.
ACTIVATIONS = frozenset(
    {
        "linear",
        "relu",
        "sigmoid",
        "tanh",
        "softplus",
        "softsign",
        "exponential",
        "selu",
        "elu",
        "softmax",
        "log_softmax",
        "hard_sigmoid",
        "leaky_relu",
        "relu6",
        "swish",
        "silu",
        "mish",
        "gelu",
        "hard_swish",
        "hard_silu",
    }
)


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

    A built-in Keras layer outside the table gets :data:`UNKNOWN`; code from
    outside Keras raises :class:`UnsafeModelError` unless ``unsafe`` is true; a layer
    the table refuses (``refused``: one that reads strings) raises :class:`UnsupportedLayerError`.
    """
    kind = layer_type(layer)
    name = layer.get("config", {}).get("name", kind) if isinstance(layer, dict) else getattr(layer, "name", kind)
    entry = SUPPORT.get(kind)
    if kind in TF_OP_LAYERS:
        refusal = tf_op_refusal(layer if isinstance(layer, dict) else {"config": layer.get_config()})
        entry = TF_OP if not refusal else LayerSupport(Role.OPAQUE, refused=refusal)
    elif entry is None:
        entry = UNKNOWN if _is_builtin(layer, kind) else CUSTOM
    if entry.refused:
        raise UnsupportedLayerError(str(name), kind, entry.refused)
    if entry.needs_unsafe and not unsafe:
        what = "runs arbitrary code" if kind == "Lambda" else "is custom code, not a Keras layer"
        raise UnsafeModelError(
            f"layer {name!r} of type {kind} {what}; loading it is refused "
            "unless you trust the file and pass --unsafe (unsafe=True)"
        )
    return entry


def _is_builtin(layer: object, kind: str) -> bool:
    """A layer class Keras itself ships (Keras 3 configs say their module; tf_keras ones are looked up)."""
    if not isinstance(layer, dict):  # the very class Keras exports: a class revived from a SavedModel lives in
        return _is_keras_class(type(layer))  # tf_keras's modules too, under the name it was saved with
    if "module" in layer:  # Keras 3 config
        registered = layer.get("registered_name")
        module = str(layer.get("module") or "")
        return (module == "keras" or module.startswith("keras.")) and registered in (None, kind)
    from deploykit.backend import keras

    return isinstance(getattr(keras.layers, kind, None), type)


def check_layers(layers, *, unsafe: bool = False) -> list[LayerSupport]:
    """Check every layer (objects or configs) against the table; return their entries."""
    return [support_for(layer, unsafe=unsafe) for layer in layers]


def unknown_layers(specs) -> list[str]:
    """``"name (Class)"`` of each layer spec outside the table, for a step's skip reason."""
    return [f"{s.name} ({s.class_name})" for s in specs if s.support.role is Role.OTHER]
