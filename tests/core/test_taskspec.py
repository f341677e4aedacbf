"""The TaskSpec of each output kind: the probabilities, classes and graph heads every step asks it for."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.contract import LOGITS_NAME, OUTPUT_NAME
from deploykit.core.task import OutputKind, Task
from deploykit.core.taskspec import SPECS, spec_of

CLASSIFIERS = [k for k, s in SPECS.items() if s.task is Task.CLASSIFICATION]


def _raw(kind: OutputKind, rng) -> np.ndarray:
    """Outputs of the kind's shape and range: 5 rows of 3 classes, or one unit."""
    if kind is OutputKind.SIGMOID:
        return rng.uniform(0.01, 0.99, (5, 1)).astype(np.float32)
    if kind is OutputKind.BINARY_LOGITS:
        return rng.normal(0, 3, (5, 1)).astype(np.float32)
    z = rng.normal(0, 2, (5, 3)).astype(np.float32)
    if kind is OutputKind.PROBABILITIES:
        return (np.exp(z) / np.exp(z).sum(1, keepdims=True)).astype(np.float32)
    return z


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_probabilities_are_rows_summing_to_one_and_give_the_predicted_class(kind):
    spec, raw = spec_of(kind), _raw(kind, np.random.default_rng(0))
    p = spec.probabilities(raw)
    assert p.shape == (5, spec.classes(raw.shape[1]))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(spec.predicted_class(raw), p.argmax(1))
    assert spec.served_outputs[-1] == OUTPUT_NAME
    assert (LOGITS_NAME in spec.served_outputs) is spec.from_logits


def test_a_binary_head_reads_p_as_class_one_the_way_binary_crossentropy_does():
    p = np.array([[0.2], [0.7], [0.5001]], np.float32)
    expected = [[0.8, 0.2], [0.3, 0.7], [0.4999, 0.5001]]
    np.testing.assert_allclose(spec_of("sigmoid").probabilities(p), expected, atol=1e-6)
    np.testing.assert_array_equal(spec_of("sigmoid").predicted_class(p), [0, 1, 1])
    z = np.array([[-2.0], [0.0], [50.0], [-800.0]], np.float32)  # logits: sigmoid without overflow
    probs = spec_of("binary_logits").probabilities(z)
    np.testing.assert_allclose(probs[:, 1], [1 / (1 + np.exp(2)), 0.5, 1.0, 0.0], atol=1e-7)
    assert spec_of("binary_logits").classes(1) == 2 and spec_of("values").classes(3) == 0


def test_a_regressor_passes_its_predictions_through():
    y = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    np.testing.assert_array_equal(spec_of(OutputKind.VALUES).probabilities(y), y)


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_tensorflow_log_probabilities_and_probabilities_agree_with_numpy(kind):
    from deploykit.backend import tf

    spec, raw = spec_of(kind), _raw(kind, np.random.default_rng(1))
    expected = spec.probabilities(raw)
    np.testing.assert_allclose(np.exp(spec.tf_log_probabilities(tf.constant(raw)).numpy()), expected, atol=1e-5)
    np.testing.assert_allclose(spec.tf_probabilities(tf.constant(raw)).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("kind", [OutputKind.LOGITS, OutputKind.BINARY_LOGITS])
def test_the_onnx_head_computes_the_same_probabilities_in_onnxruntime(kind):
    """What the exporters and the MC graph append: Softmax, or Softmax(Concat(0, z)) for one unit."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from deploykit.onnx.builder import GraphBuilder

    spec, raw = spec_of(kind), _raw(kind, np.random.default_rng(2))
    g = GraphBuilder(17)
    spec.onnx_probabilities(g, "z", output="p")
    width = raw.shape[1]
    model = g.model(
        "head",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", spec.classes(width)])],
    )
    onnx.checker.check_model(model)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["p"], {"z": raw})[0]
    np.testing.assert_allclose(out, spec.probabilities(raw), atol=1e-6)
