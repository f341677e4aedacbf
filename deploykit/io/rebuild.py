"""A tf_keras model rebuilt from a rewritten config: the config it is rebuilt from, and the check that the rebuild
computes what the model does (:mod:`deploykit.io.flat`, :mod:`deploykit.io.tf_ops`)."""

from __future__ import annotations

import numpy as np

from deploykit.keras3.convert import CHECK_SAMPLES, joined_outputs  # held as a Keras 3 import is


def config_of(model) -> dict:
    """A tf_keras model object's config as a file holds it."""
    return {"class_name": type(model).__name__, "config": model.get_config()}


def max_diff(model, flat) -> float:
    """The largest output difference on random inputs, relative to the outputs' RMS when that is above 1."""
    from deploykit.core.evaluate import output_scale

    x = _check_inputs(model, flat)
    want = joined_outputs(model(x, training=False)).astype(np.float64)
    return float(np.max(np.abs(want - joined_outputs(flat(x, training=False))))) / output_scale(want)


def _check_inputs(model, flat):
    """Random inputs of the model's shapes (an unsized length: 8 steps), in its input order; token ids in an input
    an Embedding or a CategoryEncoding reads (:func:`deploykit.core.graph.token_vocabulary`)."""
    from deploykit.core.graph import graph_from_config, one_input, token_vocabulary

    rng = np.random.default_rng(0)
    config = {"class_name": type(flat).__name__, "config": flat.get_config()}
    graph = graph_from_config(config, unsafe=True, input_shapes={n: (1,) for n in flat.input_names})  # its links
    x = []
    for name, t in zip(flat.input_names, flat.inputs):
        shape = (CHECK_SAMPLES, *(8 if d is None else int(d) for d in t.shape[1:]))
        vocabulary = token_vocabulary(one_input(graph, name)) if name in graph.inputs else None
        x.append(rng.integers(0, vocabulary, shape) if vocabulary else rng.standard_normal(shape))
    x = [a.astype(np.float32) for a in x]
    return x if len(x) > 1 else x[0]
