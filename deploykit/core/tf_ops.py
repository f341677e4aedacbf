"""The TensorFlow operations a tf_keras file may hold, and the Keras 3 operation each one computes.

A tf.keras (Keras 2) functional model records every TensorFlow call on its tensors as a ``TFOpLambda`` layer
(``SlicingOpLambda`` for ``x[...]``) that names the function by its API path: ``inputs / 127.5 - 1`` (what
``keras.applications.mobilenet_v2.preprocess_input`` does in TensorFlow's transfer-learning tutorial) is
``math.truediv`` then ``math.subtract``; tf_keras's own MobileNetV3 computes its hard-swish as
``__operators__.add`` and ``math.multiply``; ``tf.concat``, ``tf.reduce_mean`` and ``x[:, -1]`` line tensors up.
The file holds no code: tf_keras looks the name up in TensorFlow. But any TensorFlow function can be named
(``io.write_file`` too), so :data:`TF_FUNCTIONS` lists the ones deploykit reads: each is the Keras 3 operation
:mod:`deploykit.keras3.ops` already rewrites into built-in layers, with how the TensorFlow parameters map onto
it. A layer naming any other function is refused by name before the file is loaded (:func:`tf_op_refusal`);
:mod:`deploykit.io.tf_ops` rewrites the others once the model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deploykit.core.nested import MODEL_CLASSES

#: The tf_keras classes that stand for a TensorFlow call (the second for ``tensor[...]``).
TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")


@dataclass(frozen=True)
class TFFunction:
    """One TensorFlow function as the Keras 3 operation that computes the same."""

    op: str  # the Keras 3 operation class (deploykit.keras3.ops, deploykit.keras3.shape_ops)
    args: tuple[str, ...]  # its TensorFlow parameters passed as the operation's arguments, in order
    #: Its parameters read as the operation's options: TF name -> Keras 3 name. Each takes TensorFlow's default
    #: when the call leaves it out (``tf.nn.gelu`` is exact where ``ops.gelu`` is not); every other parameter
    #: must hold its default.
    options: dict[str, str] = field(default_factory=dict)


def _same(op: str, *args: str, **options: str) -> TFFunction:
    return TFFunction(op, args, dict(options))


_ONE = ("x",)
_FEATURES = ("features",)
_REDUCE = {"axis": "axis", "keepdims": "keepdims"}

#: TensorFlow API path (as ``TFOpLambda`` records it) -> the Keras 3 operation it computes.
TF_FUNCTIONS: dict[str, TFFunction] = {
    "__operators__.add": _same("Add", "x", "y"),
    "math.add": _same("Add", "x", "y"),
    "nn.bias_add": _same("Add", "value", "bias"),
    "math.subtract": _same("Subtract", "x", "y"),
    "math.multiply": _same("Multiply", "x", "y"),
    "math.truediv": _same("TrueDivide", "x", "y"),
    "math.divide": _same("TrueDivide", "x", "y"),
    "math.maximum": _same("Maximum", "x", "y"),
    "math.minimum": _same("Minimum", "x", "y"),
    "math.negative": _same("Negative", *_ONE),
    "nn.relu": _same("Relu", *_FEATURES),
    "nn.relu6": _same("Relu6", *_FEATURES),
    "math.sigmoid": _same("Sigmoid", *_ONE),
    "nn.sigmoid": _same("Sigmoid", *_ONE),
    "math.tanh": _same("Tanh", *_ONE),
    "nn.tanh": _same("Tanh", *_ONE),
    "nn.silu": _same("Silu", *_FEATURES),
    "nn.swish": _same("Silu", *_FEATURES),
    "nn.elu": _same("Elu", *_FEATURES),
    "nn.selu": _same("Selu", *_FEATURES),
    "math.softplus": _same("Softplus", *_FEATURES),
    "nn.softplus": _same("Softplus", *_FEATURES),
    "math.softsign": _same("Softsign", *_FEATURES),
    "nn.softsign": _same("Softsign", *_FEATURES),
    "math.exp": _same("Exp", *_ONE),
    "math.abs": _same("Absolute", *_ONE),
    "math.square": _same("Square", *_ONE),
    "math.l2_normalize": _same("Normalize", *_ONE, axis="axis", epsilon="epsilon"),
    "nn.leaky_relu": _same("LeakyRelu", *_FEATURES, alpha="negative_slope"),
    "nn.softmax": _same("Softmax", "logits", axis="axis"),
    "nn.gelu": _same("Gelu", *_FEATURES, approximate="approximate"),
    "clip_by_value": _same("Clip", "t", clip_value_min="x_min", clip_value_max="x_max"),
    "concat": _same("Concatenate", "values", axis="axis"),
    "reshape": _same("Reshape", "tensor", shape="newshape"),
    "expand_dims": _same("ExpandDims", "input", axis="axis"),
    "squeeze": _same("Squeeze", "input", axis="axis"),
    "compat.v1.squeeze": _same("Squeeze", "input", axis="axis"),
    "transpose": _same("Transpose", "a", perm="axes"),
    "compat.v1.transpose": _same("Transpose", "a", perm="axes"),
    "math.reduce_mean": _same("Mean", "input_tensor", **_REDUCE),
    "math.reduce_max": _same("Max", "input_tensor", **_REDUCE),
    "math.reduce_sum": _same("Sum", "input_tensor", **_REDUCE),
    "linalg.matmul": _same("Matmul", "a", "b"),
    "__operators__.getitem": _same("GetItem", "tensor", "slice_spec"),
    "cast": _same("Cast", "x", dtype="dtype"),
}


def tf_function(layer: dict) -> str:
    """The TensorFlow function a ``TFOpLambda`` / ``SlicingOpLambda`` config names (its API path)."""
    return str((layer.get("config") or {}).get("function") or "")


def tf_op_refusal(layer: dict) -> str:
    """Why deploykit refuses a TensorFlow operation layer's config ('' when it reads it)."""
    function = tf_function(layer)
    if function in TF_FUNCTIONS:
        return ""
    return (
        f"calls tf.{function}, a TensorFlow function deploykit does not read; it reads arithmetic, activations, "
        "L2 normalization, concat, reshape, transpose, reductions over positions, matmul, slicing and casts to "
        "float32 (a model rebuilt with Keras layers in their place ships)"
    )


def tf_op_lines(config: dict) -> list[str]:
    """What reading the TensorFlow operation layers of a model config (nested models' included) does, for the log
    and the report (none when there are none)."""
    calls, todo = [], [config]
    while todo:
        inner = todo.pop(0).get("config")
        for layer in (inner.get("layers") if isinstance(inner, dict) else None) or []:
            if isinstance(layer, dict) and layer.get("class_name") in MODEL_CLASSES:
                todo.append(layer)
            elif isinstance(layer, dict) and layer.get("class_name") in TF_OP_LAYERS:
                calls.append(f"tf.{tf_function(layer)}")
    if not calls:
        return []
    functions = ", ".join(dict.fromkeys(calls))
    return [f"read {len(calls)} TensorFlow operation{'s' * (len(calls) > 1)} as the Keras layers computing them "
            f"({functions})"]  # fmt: skip
