"""Helpers for the MC Dropout tests: run ONNX protos or files in onnxruntime, zero dropout rates."""

from __future__ import annotations

import dataclasses

import numpy as np


def session(model):
    """An onnxruntime CPU session for a ModelProto or a path (warnings off)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess, x, samples=None) -> dict[str, np.ndarray]:
    """All outputs of an MC session by name."""
    feed = {"input": np.asarray(x, np.float32)}
    if samples is not None:
        feed["samples"] = np.array(samples, np.int64)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def zero_dropout(chain):
    """A copy of a chain with every dropout rate forced to 0 (the deterministic network)."""
    layers = [
        dataclasses.replace(s, config={**s.config, "rate": 0.0}) if s.class_name in ("Dropout", "AlphaDropout") else s
        for s in chain.layers
    ]
    return dataclasses.replace(chain, layers=layers)


def zero_graph_dropout(graph):
    """``graph`` (a :class:`deploykit.core.graph.Graph`) with every dropout rate 0 (each node's config replaced, not
    edited): the MC graph built from it computes the deterministic network."""
    for node in graph.nodes:
        if "rate" in node.spec.config:
            node.spec.config = {**node.spec.config, "rate": 0.0}
    return graph


def keras_mc_samples(model, x, calls: int) -> np.ndarray:
    """The chapter's loop, ``calls`` outputs of ``model(x, training=True)`` stacked [calls, N, C], drawn in one
    call on ``x`` repeated ``calls`` times: each row gets its own dropout mask, so for a model without
    BatchNorm (the only kind compared with it: training=True would switch BN to batch statistics) the draws
    are the loop's, without its hundreds of eager calls (seconds each test)."""
    if any(type(layer).__name__ == "BatchNormalization" for layer in model.submodules):
        raise ValueError("keras_mc_samples needs a model without BatchNorm (fold it first)")
    x = np.asarray(x)
    tiled = np.broadcast_to(x, (calls, *x.shape)).reshape(calls * len(x), *x.shape[1:])
    out = np.asarray(model(tiled, training=True), dtype=np.float64)
    return out.reshape(calls, len(x), *out.shape[1:])


def assert_same_mean(a: np.ndarray, b: np.ndarray, k: float = 5.0) -> None:
    """Two stacks of samples [T, N, C] have the same mean: |difference| <= k standard errors (+1e-6)."""
    se = np.sqrt(a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b))
    diff = np.abs(a.mean(axis=0) - b.mean(axis=0))
    worst = np.unravel_index(np.argmax(diff - k * se), diff.shape)
    assert np.all(diff <= k * se + 1e-6), f"means differ at {worst}: {diff[worst]:.3g} > {k} x SE {se[worst]:.3g}"


def export_as_task(model, path, task, opset: int = 17, class_names=()):
    """``model`` exported to ONNX with the outputs deploykit names by task, whatever name the converter gave its
    one output: a logits classifier's ``logits`` plus ``probabilities`` (a Softmax in the graph), a regressor's
    ``prediction``; with the ``deploykit.task`` entry and the metadata an export writes."""
    import json

    import onnx
    from onnx import helper

    from deploykit.core.contract import LOGITS_NAME, OUTPUT_NAME, PREDICTION_NAME, TASK_KEY
    from deploykit.core.task import Task
    from deploykit.export.convert import keras_to_onnx
    from deploykit.export.metadata import ModelMetadata, write_metadata
    from deploykit.onnx.graph_ops import retarget, set_props

    proto = keras_to_onnx(model, opset=opset)
    graph = proto.graph
    raw = graph.output[0].name
    name = PREDICTION_NAME if task is Task.REGRESSION else LOGITS_NAME
    if raw != name:
        retarget(graph, raw, name)
        graph.output[0].name = name
    if task is Task.CLASSIFICATION:
        graph.node.append(helper.make_node("Softmax", [LOGITS_NAME], [OUTPUT_NAME], axis=-1))
        out = onnx.ValueInfoProto()
        out.CopyFrom(graph.output[0])
        out.name = OUTPUT_NAME
        graph.output.append(out)
    write_metadata(proto, ModelMetadata(class_names=list(class_names)))
    output = "values" if task is Task.REGRESSION else "logits"
    set_props(proto, {TASK_KEY: json.dumps({"task": task.value, "output": output})})
    onnx.save(proto, str(path))
    return path
