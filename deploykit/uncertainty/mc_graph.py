"""Build the MC Dropout ONNX graph straight from a layer chain.

One onnxruntime call draws T dropout samples and reduces them. The layers
before the first dropout run once on the batch; the batch is then tiled T
times ([T*N, ...], one batched pass, no loop) and the rest of the network runs
on it; the probabilities are reshaped to [T, N, C] and reduced.

Randomness comes only from ONNX ``Dropout`` nodes in training mode (ratio and
``training_mode`` are constant inputs). AlphaDropout has no ONNX op: it uses
the keep-mask of a Dropout node (P(keep) = 1 - rate, as Keras draws it) with
``Where`` and Keras's affine correction. A Dropout mask is used rather than
``RandomUniformLike`` because onnxruntime seeds an unseeded RandomUniformLike
with one process-wide value, so every session of a process would repeat the
same draws; unseeded Dropout nodes share a generator that advances instead.

Seeds (onnxruntime's CPU kernels): a seeded Dropout node keeps its own
generator, created with the session; call k of the session draws from seed+k.
So with a fixed seed every new session repeats the same sequence of outputs
(call k of one session equals call k of another, for the same inputs and
``samples``), while successive calls of one session still differ; concurrent
calls each take the next seed, in no defined order. Without a seed, outputs
differ between calls, sessions and processes. (A quirk of that kernel: it
seeds a fresh minstd engine with seed+k, so the FIRST element of each mask
barely changes from one call to the next; every other element, and hence the
T samples of a call, vary as they should.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploykit.chain import Chain, LayerSpec
from deploykit.configs import Config
from deploykit.errors import ConfigError, UnsupportedLayerError, UsageError
from deploykit.export.convert import DEFAULT_OPSET, INPUT_NAME
from deploykit.layers import Role

SAMPLES_NAME = "samples"
OUTPUT_NAMES = ("mean", "std", "predictive_entropy", "mutual_information", "predicted_class")
SAMPLES_OUTPUT = "sample_probabilities"
DEFAULT_SAMPLES = 30
DEFAULT_MAX_SAMPLES = 1000

# Keras's SELU constants (AlphaDropout's correction is built from them).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_KERAS_EPSILON = 1e-7  # Normalization's floor on the standard deviation
_TINY = float(np.finfo(np.float32).tiny)  # floor inside log(p): 0 * log(0) counts as 0


def is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class MCConfig(Config):
    """How the MC graph samples; validated on construction."""

    samples: int = DEFAULT_SAMPLES  # default T when a call does not feed `samples`
    max_samples: int = DEFAULT_MAX_SAMPLES  # the graph clamps `samples` to [1, max_samples]
    seed: int | None = None  # None: fresh draws; an int: every new session repeats the same sequence
    include_samples: bool = False  # also output the raw [T, N, C] probabilities

    def __post_init__(self) -> None:
        for name in ("samples", "max_samples"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if self.samples > self.max_samples:
            raise ConfigError(f"samples must be at most max_samples ({self.max_samples}), got {self.samples}")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise ConfigError(f"seed must be None or an integer >= 0, got {self.seed!r}")
        if not isinstance(self.include_samples, bool):
            raise ConfigError(f"include_samples must be true or false, got {self.include_samples!r}")


def dropout_layers(chain: Chain) -> list[LayerSpec]:
    """The Dropout / AlphaDropout layers of a chain (in order)."""
    return [spec for spec in chain.layers if spec.support.role is Role.DROPOUT]


def first_dropout_index(chain: Chain) -> int:
    """How many layers come before the first dropout (they run once per call); 0 without dropout."""
    return next((i for i, spec in enumerate(chain.layers) if spec.support.role is Role.DROPOUT), 0)


def build_mc_graph(chain: Chain, config: MCConfig = MCConfig(), *, prefix_once: bool = True, opset: int = DEFAULT_OPSET):
    """The MC Dropout ``onnx.ModelProto`` of a chain (not yet checked or saved).

    ``prefix_once=False`` tiles the input instead, running the whole network T
    times (same distribution, more work; kept to test the optimisation).
    """
    import onnx
    from onnx import TensorProto, helper

    g = _Graph(config.seed)
    tile_at = first_dropout_index(chain) if prefix_once else 0
    clamped = g.op("Max", [g.op("Min", [SAMPLES_NAME, g.const(config.max_samples, np.int64)]), g.const(1, np.int64)])
    samples = g.op("Reshape", [clamped, g.const([1], np.int64)])  # [T]
    x, shape = INPUT_NAME, tuple(chain.input_shape)
    for i, spec in enumerate(chain.layers):
        if i == tile_at:  # [N, ...] -> [T * N, ...]: row t * N + n is sample t of instance n
            x = g.op("Tile", [x, g.op("Concat", [samples, g.const([1] * len(shape), np.int64)], axis=0)])
        x, shape = _emit(g, spec, x, shape)
    if not chain.layers or g.nodes[-1].op_type != "Softmax" or len(shape) != 1:
        last = chain.layers[-1] if chain.layers else None
        raise UnsupportedLayerError(last.name if last else chain.name, last.class_name if last else "model",
                                    "MC Dropout needs a model that ends with a softmax over classes (output [N, C])")
    num_classes = shape[0]
    probs = g.op("Reshape", [x, g.op("Concat", [samples, g.const([-1, num_classes], np.int64)], axis=0)])  # [T, N, C]
    outputs = _reduce(g, probs)
    if config.include_samples:
        outputs[SAMPLES_OUTPUT] = g.op("Identity", [probs])
    for name, value in outputs.items():
        g.nodes.append(helper.make_node("Identity", [value], [name], name=f"output_{name}"))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info(INPUT_NAME, f32, ["N", *chain.input_shape]),
              helper.make_tensor_value_info(SAMPLES_NAME, i64, [])]
    g.inits.append(onnx.numpy_helper.from_array(np.array(config.samples, np.int64), SAMPLES_NAME))
    out_types = {"mean": (f32, ["N", num_classes]), "std": (f32, ["N", num_classes]),
                 "predictive_entropy": (f32, ["N"]), "mutual_information": (f32, ["N"]),
                 "predicted_class": (i64, ["N"]), SAMPLES_OUTPUT: (f32, ["T", "N", num_classes])}
    outs = [helper.make_tensor_value_info(name, *out_types[name]) for name in outputs]
    graph = helper.make_graph(g.nodes, f"{chain.name}_mc_dropout", inputs, outs, initializer=g.inits,
                              doc_string=_DOC.format(default=config.samples, limit=config.max_samples))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="deploykit",
                             ir_version=helper.find_min_ir_version_for(opsets))


_DOC = ("MC Dropout: inputs `input` float32 [N, ...] and optional `samples` int64 scalar (default {default}, "
        "clamped to [1, {limit}]); outputs mean/std [N, C] over the samples (std: population), predictive_entropy "
        "and mutual_information [N] (natural log), predicted_class int64 [N] (argmax of mean).")


class _Graph:
    """Nodes and initializers under construction, with unique names and per-node seeds."""

    def __init__(self, seed: int | None):
        self.nodes, self.inits = [], []
        self._count = 0
        self._seed = seed
        self._true = None

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, dtype=np.float32) -> str:
        import onnx

        name = self.name("const")
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def true(self) -> str:
        if self._true is None:
            self._true = self.const(True, np.bool_)
        return self._true

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs):
        from onnx import helper

        outputs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{outputs[0]}_node", **attrs))
        return outputs[0] if n_out == 1 else tuple(outputs)

    def dropout_seed(self) -> dict:
        """The seed attribute of the next Dropout node: distinct, well-spread seeds per node."""
        if self._seed is None:
            return {}
        index = sum(n.op_type == "Dropout" for n in self.nodes)
        return {"seed": int(np.random.SeedSequence([int(self._seed), index]).generate_state(1)[0] & 0x7FFFFFFF)}


def _emit(g: _Graph, spec: LayerSpec, x: str, shape: tuple):
    role = spec.support.role
    if role is Role.INPUT:
        return x, shape
    if role is Role.RESHAPE:
        return _reshape(g, spec, x, shape)
    if role is Role.DENSE:
        kernel, *bias = spec.weights
        y = g.op("MatMul", [x, g.const(kernel)])
        if bias and spec.config.get("use_bias", True):
            y = g.op("Add", [y, g.const(bias[0])])
        return _activation(g, spec, spec.config.get("activation", "linear"), y), (*shape[:-1], int(kernel.shape[1]))
    if role is Role.BATCHNORM:
        return _batchnorm(g, spec, x, shape), shape
    if role is Role.NORMALIZATION:
        return _normalization(g, spec, x, shape), shape
    if role is Role.DROPOUT:
        return _dropout(g, spec, x), shape
    if role is Role.ACTIVATION:
        return _activation_layer(g, spec, x), shape
    raise UnsupportedLayerError(spec.name, spec.class_name, "cannot be expressed in the MC Dropout graph")


def _reshape(g: _Graph, spec: LayerSpec, x: str, shape: tuple):
    if spec.class_name == "Flatten":
        new = (int(np.prod(shape)),)
    else:
        target = [int(d) for d in spec.config["target_shape"]]
        if -1 in target:
            known = int(np.prod([d for d in target if d != -1]))
            target[target.index(-1)] = int(np.prod(shape)) // known
        new = tuple(target)
    return g.op("Reshape", [x, g.const([0, *new], np.int64)]), new  # 0 keeps the batch axis


def _last_axis_only(spec: LayerSpec, axes, rank: int) -> None:
    axes = [axes] if isinstance(axes, int) else list(axes)
    if any(a not in (-1, rank) for a in axes) or len(axes) != 1:
        raise UnsupportedLayerError(spec.name, spec.class_name,
                                    f"only the last (feature) axis is supported, got axis {axes}")


def _batchnorm(g: _Graph, spec: LayerSpec, x: str, shape: tuple) -> str:
    """Inference BatchNormalization with its moving statistics: x * scale + offset."""
    cfg = spec.config
    _last_axis_only(spec, cfg.get("axis", -1), len(shape))
    w = [np.asarray(a, np.float64) for a in spec.weights]
    gamma = w.pop(0) if cfg.get("scale", True) else 1.0
    beta = w.pop(0) if cfg.get("center", True) else 0.0
    mean, var = w
    scale = gamma / np.sqrt(var + float(cfg.get("epsilon", 1e-3)))
    offset = beta - mean * scale
    return g.op("Add", [g.op("Mul", [x, g.const(scale)]), g.const(offset)])


def _normalization(g: _Graph, spec: LayerSpec, x: str, shape: tuple) -> str:
    """Keras Normalization: (x - mean) / max(sqrt(var), 1e-7), or its inverse."""
    cfg = spec.config
    if spec.weights:
        mean, var = np.asarray(spec.weights[0], np.float64), np.asarray(spec.weights[1], np.float64)
    elif cfg.get("mean") is not None and cfg.get("variance") is not None:
        mean, var = np.asarray(cfg["mean"], np.float64), np.asarray(cfg["variance"], np.float64)
    else:
        raise UnsupportedLayerError(spec.name, spec.class_name, "Normalization was never adapted (no mean and variance)")
    if mean.size == 1:
        mean, var = mean.reshape(()), var.reshape(())
    elif mean.size == shape[-1]:
        mean, var = mean.reshape(shape[-1]), var.reshape(shape[-1])
    elif mean.size == int(np.prod(shape)):
        mean, var = mean.reshape(shape), var.reshape(shape)
    else:
        raise UnsupportedLayerError(spec.name, spec.class_name, f"statistics of size {mean.size} do not fit inputs {shape}")
    std = np.maximum(np.sqrt(var), _KERAS_EPSILON)
    if cfg.get("invert", False):
        return g.op("Add", [g.op("Mul", [x, g.const(std)]), g.const(mean)])
    return g.op("Div", [g.op("Sub", [x, g.const(mean)]), g.const(std)])


def _dropout(g: _Graph, spec: LayerSpec, x: str) -> str:
    """Dropout kept active (ONNX Dropout, training_mode true); AlphaDropout from its keep-mask."""
    from onnx import TensorProto

    rate = float(spec.config.get("rate", 0.0))
    if spec.config.get("noise_shape") is not None:
        raise UnsupportedLayerError(spec.name, spec.class_name, "a noise_shape is not supported in the MC Dropout graph")
    if not 0.0 <= rate < 1.0:
        raise UnsupportedLayerError(spec.name, spec.class_name, f"rate must be in [0, 1), got {rate}")
    if spec.class_name not in ("Dropout", "AlphaDropout"):
        raise UnsupportedLayerError(spec.name, spec.class_name, "no MC Dropout form for this dropout type")
    # The keep-mask output must be used: onnxruntime's DropoutElimination removes any Dropout node
    # whose mask is unused, whatever its training_mode.
    dropped, keep = g.op("Dropout", [x, g.const(rate), g.true()], n_out=2, **g.dropout_seed())
    if spec.class_name == "Dropout":
        # `dropped` is already 0 where the mask is off; Mul by the mask costs far less than Where.
        return g.op("Mul", [dropped, g.op("Cast", [keep], to=TensorProto.FLOAT)])
    # tf_keras AlphaDropout: dropped units are set to alpha_p, then a * x + b restores mean and variance.
    alpha_p = -_SELU_ALPHA * _SELU_SCALE
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    kept = g.op("Where", [keep, x, g.const(alpha_p)])
    return g.op("Add", [g.op("Mul", [kept, g.const(a)]), g.const(b)])


def _activation_layer(g: _Graph, spec: LayerSpec, x: str) -> str:
    cfg = spec.config
    kind = spec.class_name
    if kind == "Activation":
        return _activation(g, spec, cfg.get("activation", "linear"), x)
    if kind == "Softmax":
        return g.op("Softmax", [x], axis=int(cfg.get("axis", -1)))
    if kind == "ELU":
        return g.op("Elu", [x], alpha=float(cfg.get("alpha", 1.0)))
    if kind == "LeakyReLU":
        return g.op("LeakyRelu", [x], alpha=float(cfg.get("alpha", 0.3)))
    if kind == "PReLU":
        return g.op("PRelu", [x, g.const(spec.weights[0])])
    if kind == "ReLU":
        if float(cfg.get("threshold") or 0.0) != 0.0:
            raise UnsupportedLayerError(spec.name, kind, "a non-zero threshold is not supported")
        slope = float(cfg.get("negative_slope") or 0.0)
        y = g.op("LeakyRelu", [x], alpha=slope) if slope else g.op("Relu", [x])
        if cfg.get("max_value") is not None:
            y = g.op("Min", [y, g.const(float(cfg["max_value"]))])
        return y
    raise UnsupportedLayerError(spec.name, kind, "no ONNX form for this activation layer")


def _activation(g: _Graph, spec: LayerSpec, name, x: str) -> str:
    """A Keras activation given by name, as ONNX ops."""
    if name in (None, "linear"):
        return x
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus",
              "softsign": "Softsign", "exponential": "Exp", "selu": "Selu", "elu": "Elu"}
    if name in simple:
        return g.op(simple[name], [x])  # ONNX Selu / Elu defaults are Keras's constants
    if name == "softmax":
        return g.op("Softmax", [x], axis=-1)
    if name == "log_softmax":
        return g.op("LogSoftmax", [x], axis=-1)
    if name == "hard_sigmoid":
        return g.op("HardSigmoid", [x], alpha=0.2, beta=0.5)
    if name == "leaky_relu":  # tf.nn.leaky_relu's default slope
        return g.op("LeakyRelu", [x], alpha=0.2)
    if name == "relu6":
        return g.op("Clip", [x, g.const(0.0), g.const(6.0)])
    if name in ("swish", "silu"):
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name == "mish":
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x])])])
    if name == "gelu":  # exact (erf) form, Keras's default
        erf = g.op("Erf", [g.op("Mul", [x, g.const(1 / np.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.const(0.5)]), g.op("Add", [erf, g.const(1.0)])])
    raise UnsupportedLayerError(spec.name, spec.class_name, f"activation {name!r} has no ONNX form in deploykit")


def _reduce(g: _Graph, probs: str) -> dict[str, str]:
    """Mean, std, predictive entropy and mutual information of [T, N, C] probabilities."""
    mean = g.op("ReduceMean", [probs], axes=[0], keepdims=0)
    diff = g.op("Sub", [probs, mean])
    std = g.op("Sqrt", [g.op("ReduceMean", [g.op("Mul", [diff, diff])], axes=[0], keepdims=0)])
    tiny = g.const(_TINY)
    minus_one = g.const(-1.0)

    def entropy(p: str, class_axis: int) -> str:
        plogp = g.op("Mul", [p, g.op("Log", [g.op("Max", [p, tiny])])])
        return g.op("Mul", [g.op("ReduceSum", [plogp, g.const([class_axis], np.int64)], keepdims=0), minus_one])

    predictive = entropy(mean, 1)
    expected = g.op("ReduceMean", [entropy(probs, 2)], axes=[0], keepdims=0)
    # H(mean) >= mean H (Jensen); clip the float rounding below zero.
    mutual = g.op("Max", [g.op("Sub", [predictive, expected]), g.const(0.0)])
    predicted = g.op("ArgMax", [mean], axis=1, keepdims=0)
    return {"mean": mean, "std": std, "predictive_entropy": predictive, "mutual_information": mutual,
            "predicted_class": predicted}


def check_has_dropout(chain: Chain) -> None:
    """Raise a clear error when no dropout layer would sample."""
    if not any(float(s.config.get("rate", 0.0)) > 0 for s in dropout_layers(chain)):
        raise UsageError(
            f"model {chain.name!r} has no Dropout or AlphaDropout layer with a rate > 0, so MC Dropout has nothing "
            "to sample; train it with dropout (e.g. deploykit train --dropout 0.2)"
        )
