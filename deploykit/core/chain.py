"""The single-path view of a model graph (:mod:`deploykit.core.graph`): one input, then a list of layer specs.

Kept for the steps that only make sense on a path (compact of Dense units,
the sparsity tuning's Dense list); :func:`to_chain` refuses a branching model
with :class:`UnsupportedLayerError` saying so, which the pipeline turns into a
skipped step.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploykit.core.graph import Graph, LayerSpec, Node, graph_from_model, to_keras
from deploykit.errors import ModelLoadError, UnsupportedLayerError

__all__ = ["Chain", "LayerSpec", "to_chain", "from_chain", "chain_of", "graph_of"]


class NotSinglePathError(UnsupportedLayerError):
    """A step that needs a single path met a branching model (the pipeline skips the step with this message)."""

    def __init__(self, model_name: str):
        self.layer_name, self.layer_type = model_name, "model"
        ModelLoadError.__init__(
            self,
            f"model {model_name!r} branches or has several inputs/outputs; this step handles single-path models only",
        )


@dataclass
class Chain:
    """A linear stack of layers after an input of ``input_shape`` (no batch axis)."""

    input_shape: tuple[int, ...]
    layers: list[LayerSpec]
    name: str = "deploykit_model"


def chain_of(graph: Graph) -> Chain:
    """The chain view of a graph that is a single path; :class:`UnsupportedLayerError` otherwise."""
    nodes = graph.path()
    if nodes is None:
        raise NotSinglePathError(graph.name)
    return Chain(tuple(graph.input_shape), [n.spec for n in nodes], name=graph.name)


def graph_of(chain: Chain, input_name: str = "input") -> Graph:
    """The graph of a chain (shapes unknown)."""
    nodes, previous = [], input_name
    for spec in chain.layers:
        nodes.append(Node(spec, [previous]))
        previous = spec.name
    return Graph({input_name: tuple(chain.input_shape)}, nodes, [previous], chain.name)


def to_chain(model, *, unsafe: bool = False) -> Chain:
    """Read a tf_keras model that is a single path (Sequential, or a functional plain chain)."""
    return chain_of(graph_from_model(model, unsafe=unsafe))


def from_chain(chain: Chain):
    """Build a fresh tf_keras Sequential from a chain, with its weights set."""
    return to_keras(graph_of(chain))
