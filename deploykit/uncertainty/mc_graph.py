"""Build the MC Dropout ONNX graph straight from a model graph (each layer's ONNX form: ``mc_layers``).

One onnxruntime call draws T dropout samples and reduces them. The layers
with no dropout upstream run once on the batch; every edge from them into the
sampled region (every dropout and everything downstream of one, residual
skips included) is tiled T times ([T*N, ...], one batched pass, no loop); the
outputs are reshaped to [T, N, C] and reduced.

The head (what follows the model's last layer) depends on what the model
predicts (:mod:`deploykit.core.task`): a softmax's probabilities are reduced as they
are; a logits classifier gets a ``Softmax`` per sample first (so a temperature
divides the logits of each sample, and every output describes probabilities),
and a binary head (one sigmoid or linear unit) the ``Softmax(Concat(0, z))`` of its
logit per sample (:mod:`deploykit.core.taskspec`): two-class probabilities;
a regressor's predictions [T, N, K] give ``mean`` and ``std`` per target
(population std over the samples) and, with ``include_samples``,
``sample_predictions``.

Randomness comes only from ONNX ``Dropout`` nodes in training mode (ratio and
``training_mode`` are constant inputs). With ``MCConfig.mask`` =
:attr:`MaskKind.POOL` (what the default AUTO picks when the tables cost at most half the model's weights:
:func:`~deploykit.uncertainty.masks.resolve_mask`) each dropout layer's mask is a window of a table drawn
at export, at a random offset per row whose bits are the keep-mask of a small
Dropout node (:mod:`deploykit.uncertainty.masks`: its sampling scheme and
limits); :attr:`MaskKind.DROPOUT` uses the keep-mask of a Dropout node on the
layer's input itself (one draw per element). AlphaDropout has no ONNX op: it
uses the keep flags (P(keep) = 1 - rate, as Keras draws it) with ``Where`` and
Keras's affine correction. Dropout masks are used rather than
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

from deploykit.configs import SEED_MAX, Config, boolean, choice, integer
from deploykit.core.chain import Chain, graph_of
from deploykit.core.contract import KIND_MC_DROPOUT, SAMPLE_PREDICTIONS_OUTPUT, SAMPLES_NAME, SAMPLES_OUTPUT
from deploykit.core.graph import Graph, LayerSpec, source_of, tensor_name
from deploykit.core.layers import Role
from deploykit.core.multi_io import PACKED_OUTPUT
from deploykit.core.task import OutputKind, Task, output_kind, resolve_task
from deploykit.core.taskspec import spec_of
from deploykit.errors import ConfigError, UnsupportedLayerError, UsageError
from deploykit.export.contract_onnx import output_info
from deploykit.export.convert import DEFAULT_OPSET, INPUT_NAME
from deploykit.uncertainty import mc_rnn  # noqa: F401  (registers the recurrent layers' emitters)
from deploykit.uncertainty.masks import DEFAULT_POOL, MaskKind, resolve_mask
from deploykit.uncertainty.mc_layers import EMITTERS, MCGraph, emit, mask_shape

__all__ = ["MCConfig", "build_mc_graph", "mc_task", "check_has_dropout", "dropout_layers", "sampled_nodes", "EMITTERS"]

DEFAULT_SAMPLES = 30
DEFAULT_MAX_SAMPLES = 1000


@dataclass(frozen=True)
class MCConfig(Config):
    """How the MC graph samples; validated on construction."""

    samples: int = DEFAULT_SAMPLES  # default T when a call does not feed `samples`
    max_samples: int = DEFAULT_MAX_SAMPLES  # the graph clamps `samples` to [1, max_samples]
    seed: int | None = None  # None: fresh draws; an int: every new session repeats the same sequence
    include_samples: bool = False  # also output the raw [T, N, C] probabilities (regression: predictions)
    task: Task | None = None  # None: read off the model (a softmax is a classifier; else by the output width)
    mask: MaskKind = MaskKind.AUTO  # how each dropout mask is drawn (deploykit.uncertainty.masks.resolve_mask)
    pool: int = DEFAULT_POOL  # MaskKind.POOL: distinct masks per dropout layer (a power of two)

    def __post_init__(self) -> None:
        integer("samples", self.samples, 1)
        integer("max_samples", self.max_samples, 1)
        if self.samples > self.max_samples:
            raise ConfigError(f"samples must be at most max_samples ({self.max_samples}), got {self.samples}")
        integer("seed", self.seed, 0, SEED_MAX, optional=True)
        boolean("include_samples", self.include_samples)
        if self.task is not None:
            object.__setattr__(self, "task", choice(Task, "task", self.task))
        object.__setattr__(self, "mask", choice(MaskKind, "mask", self.mask))
        integer("pool", self.pool, 16, 2**20)
        if self.pool & (self.pool - 1):
            raise ConfigError(f"pool must be a power of two (the offsets are random bits), got {self.pool}")


def mask_kind(model_graph, config: MCConfig) -> MaskKind:
    """The mask kind the graph is built with (``config.mask``, AUTO resolved on this model's sizes)."""
    graph = _as_graph(model_graph)
    widths = []
    for node in graph.nodes:
        if node.spec.support.role is Role.DROPOUT:
            widths.append(int(np.prod(mask_shape(node.spec, graph.in_shape(node) or ()))))
    weight_bytes = sum(np.asarray(w).size * 4 for node in graph.nodes for w in node.spec.weights)
    return resolve_mask(config.mask, widths, weight_bytes, config.pool)


def _as_graph(model_graph) -> Graph:
    """A :class:`Graph` from a graph or a chain view (the chain's specs are shared, not copied)."""
    return graph_of(model_graph) if isinstance(model_graph, Chain) else model_graph


def dropout_layers(model_graph) -> list[LayerSpec]:
    """The dropout layers (Dropout, AlphaDropout, SpatialDropout) of a graph or chain, in order."""
    return [n.spec for n in _as_graph(model_graph).nodes if n.spec.support.role is Role.DROPOUT]


def sampled_nodes(graph: Graph, start: frozenset = frozenset()) -> set[str]:
    """The nodes that differ between MC samples: every dropout and everything downstream of one (or of ``start``)."""
    sampled = set(start)
    for node in graph.nodes:  # topological: inputs are decided first
        if node.spec.support.sampled or any(i in sampled for i in node.sources):
            sampled.add(node.name)
    return sampled


def first_dropout_index(model_graph) -> int:
    """How many layers run once per call (they have no dropout upstream); 0 without dropout."""
    graph = _as_graph(model_graph)
    sampled = sampled_nodes(graph)
    return len(graph.nodes) - len(sampled) if sampled else 0


def mc_task(model_graph, task: Task | None = None, shape: tuple | None = None) -> tuple[Task, OutputKind]:
    """What the MC graph's head reduces: the task and output kind of the model's one [N, C or K] output.

    Read off the graph (:func:`deploykit.core.task.output_kind`), with ``task`` (the user's) deciding between
    logits and regression values; a model whose output is not one vector per row is refused. ``shape``:
    the output's per-sample shape when the graph does not record it (a chain view).
    """
    graph = _as_graph(model_graph)
    node = graph.node(graph.outputs[0]) if graph.nodes else None
    shape = shape if shape is not None else node.shape if node is not None else None
    if node is None or shape is None or len(shape) != 1:
        raise UnsupportedLayerError(
            node.spec.name if node else graph.name,
            node.spec.class_name if node else "model",
            "MC Dropout needs a model whose output is one vector per row ([N, C] or [N, K])",
        )
    if graph.outputs == [PACKED_OUTPUT]:  # several outputs side by side: regression heads (deploykit.core.multi_io)
        task = Task.REGRESSION
    return resolve_task(output_kind(graph), int(shape[0]), task=task)


def build_mc_graph(model_graph, config: MCConfig = MCConfig(), *, prefix_once: bool = True, opset: int = DEFAULT_OPSET):
    """The MC Dropout ``onnx.ModelProto`` of a graph (or chain), not yet checked or saved.

    Nodes are emitted in topological order; the ones with no dropout upstream
    run once on the batch, and every edge from them into the sampled region
    (a residual skip too) is tiled to [T * N, ...]: row ``t * N + n`` is sample
    ``t`` of instance ``n``. ``prefix_once=False`` tiles the input instead,
    running the whole network T times (same distribution, more work; kept to
    test the optimisation).
    """
    from onnx import TensorProto, helper

    graph = _as_graph(model_graph)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedLayerError(graph.name, "model", "MC Dropout needs a single-input, single-output model")
    input_name, input_shape = next(iter(graph.inputs.items()))
    g = MCGraph(config.seed, opset, mask_kind(graph, config), config.pool, len(dropout_layers(graph)))
    samples = _samples_value(g, config)  # [T]
    sampled = sampled_nodes(graph, frozenset() if prefix_once else frozenset({input_name}))
    values = {input_name: (INPUT_NAME, tuple(input_shape))}
    tiled: dict[str, str] = {}

    def tile(name: str) -> str:
        if name not in tiled:
            x, shape = values[name]
            tiled[name] = g.op("Tile", [x, g.op("Concat", [samples, g.const([1] * len(shape), np.int64)], axis=0)])
        return tiled[name]

    if not prefix_once:
        values[input_name] = (tile(input_name), values[input_name][1])
    for node in graph.nodes:
        xs = [tile(i) if node.name in sampled and source_of(i)[0] not in sampled else values[i][0] for i in node.inputs]
        made = emit(g, node, xs, [values[i][1] for i in node.inputs])
        for index, value in enumerate(made if isinstance(made, list) else [made]):  # a list: a layer's outputs
            values[tensor_name(node.name, index)] = value
    out = graph.outputs[0]
    x, shape = values[out]
    task, kind = mc_task(graph, config.task, shape)
    spec = spec_of(kind)
    last = spec.activation_op
    if last and g.nodes[-1].op_type != last:
        raise UnsupportedLayerError(
            graph.nodes[-1].spec.name,
            graph.nodes[-1].spec.class_name,
            f"MC Dropout needs the {last.lower()} as the model's last operation",
        )
    if spec.binary and not spec.from_logits:  # a sigmoid head's samples are the softmax of [0, z] on its logit z, below
        x = g.nodes.pop().input[0]
    if out not in sampled:
        x = (
            tile(out)
            if x == values[out][0]
            else g.op("Tile", [x, g.op("Concat", [samples, g.const([1] * len(shape), np.int64)], axis=0)])
        )
    if spec.from_logits or spec.binary:  # per sample: the one Softmax a per-sample temperature divides before
        x = spec.onnx_probabilities(g, x)
    width = spec.classes(shape[0]) or shape[0]
    stacked = g.op("Reshape", [x, g.op("Concat", [samples, g.const([-1, width], np.int64)], axis=0)])  # [T, N, C or K]
    outputs = reduce_samples(g, stacked, task)
    if config.include_samples:
        outputs[SAMPLES_OUTPUT if task is Task.CLASSIFICATION else SAMPLE_PREDICTIONS_OUTPUT] = g.op(
            "Identity", [stacked]
        )
    for name, value in outputs.items():
        g.op("Identity", [value], output=name)

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(INPUT_NAME, f32, ["N", *input_shape]), _samples_input(g, config)]
    outs = [output_info(name, task, KIND_MC_DROPOUT, width) for name in outputs]  # as deploykit.core.contract declares
    doc = _DOC if task is Task.CLASSIFICATION else _REGRESSION_DOC
    return g.model(
        f"{graph.name}_mc_dropout", inputs, outs, doc.format(default=config.samples, limit=config.max_samples)
    )


#: From this opset the `samples` default is given by an optional-typed input (OptionalHasElement + If),
#: which onnxruntime accepts omitted without the "Initializer samples appears in graph inputs" warning
#: an initializer-backed input prints on every session. Below it (no Optional ops) the initializer stays.
OPTIONAL_INPUT_OPSET = 15


def _samples_input(g: MCGraph, config: MCConfig):
    from onnx import TensorProto, helper

    if g.opset >= OPTIONAL_INPUT_OPSET:
        optional = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.INT64, []))
        return helper.make_value_info(SAMPLES_NAME, optional)
    return helper.make_tensor_value_info(SAMPLES_NAME, TensorProto.INT64, [])


def _samples_value(g: MCGraph, config: MCConfig) -> str:
    """The clamped sample count as a [1] int64 tensor: the fed `samples`, or the default when it is omitted."""
    from onnx import TensorProto, helper

    if g.opset >= OPTIONAL_INPUT_OPSET:
        scalar = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, [])  # noqa: E731
        fed = helper.make_graph(
            [helper.make_node("OptionalGetElement", [SAMPLES_NAME], ["samples_fed"])],
            "samples_fed",
            [],
            [scalar("samples_fed")],
        )
        default = helper.make_graph(
            [
                helper.make_node(
                    "Constant",
                    [],
                    ["samples_default"],
                    value=helper.make_tensor("samples_default_value", TensorProto.INT64, [], [config.samples]),
                )
            ],
            "samples_default",
            [],
            [scalar("samples_default")],
        )
        value = g.op("If", [g.op("OptionalHasElement", [SAMPLES_NAME])], then_branch=fed, else_branch=default)
    else:
        value = g.const(config.samples, np.int64, name=SAMPLES_NAME)
    clamped = g.op("Max", [g.op("Min", [value, g.const(config.max_samples, np.int64)]), g.const(1, np.int64)])
    return g.op("Reshape", [clamped, g.const([1], np.int64)])


_DOC = (
    "MC Dropout: inputs `input` float32 [N, ...] and optional `samples` int64 scalar (default {default}, "
    "clamped to [1, {limit}]); outputs mean/std [N, C] over the samples (std: population), predictive_entropy "
    "and mutual_information [N] (natural log), predicted_class int64 [N] (argmax of mean)."
)


_REGRESSION_DOC = (
    "MC Dropout regression: inputs `input` float32 [N, ...] and optional `samples` int64 scalar "
    "(default {default}, clamped to [1, {limit}]); outputs mean and std [N, K] per target over the "
    "samples (std: population), in the targets' units."
)


def reduce_samples(g, stacked: str, task: Task = Task.CLASSIFICATION) -> dict[str, str]:
    """The MC output contract from stacked samples (or members) [T, N, C or K].

    Classification (probabilities): mean, std, predictive entropy, mutual information, predicted class.
    Regression (predictions): mean and std per target. ``g``: the :class:`~deploykit.onnx.builder.GraphBuilder`
    of the MC graph (samples) or of the ensemble edit (members), which share these formulas.
    """
    mean = g.reduce("ReduceMean", stacked, [0])
    diff = g.op("Sub", [stacked, mean])
    std = g.op("Sqrt", [g.reduce("ReduceMean", g.op("Mul", [diff, diff]), [0])])
    if task is Task.REGRESSION:
        return {"mean": mean, "std": std}
    predictive = g.entropy(mean, 1)
    expected = g.reduce("ReduceMean", g.entropy(stacked, 2), [0])
    # H(mean) >= mean H (Jensen); clip the float rounding below zero.
    mutual = g.op("Max", [g.op("Sub", [predictive, expected]), g.const(0.0)])
    predicted = g.op("ArgMax", [mean], axis=1, keepdims=0)
    return {
        "mean": mean,
        "std": std,
        "predictive_entropy": predictive,
        "mutual_information": mutual,
        "predicted_class": predicted,
    }


def check_has_dropout(model_graph) -> None:
    """Raise a clear error when no dropout layer would sample."""
    if not any(float(s.config.get("rate", 0.0)) > 0 for s in dropout_layers(model_graph)):
        raise UsageError(
            f"model {model_graph.name!r} has no Dropout or AlphaDropout layer with a rate > 0, "
            "so MC Dropout has nothing "
            "to sample; train it with dropout (e.g. deploykit train --dropout 0.2)"
        )
