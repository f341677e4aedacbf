"""The ONNX conversion runs tf2onnx's graph optimizers in place, and falls back to its copying mode when one fails.

tf2onnx deep-copies the whole graph, weights included, before each optimizer pass by default (so a pass that
raises can be skipped): a third of a keras.applications network's conversion, and a copy of every weight per pass.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # Keras 3 builds and conversions: seconds each


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small Keras 3 convnet (BatchNorm, a transpose-heavy NHWC graph for tf2onnx's optimizers), imported."""
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as deploykit does)
    from deploykit import load_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((9, 9, 3)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    path = tmp_path_factory.mktemp("k3") / "model.keras"
    model.save(path)
    return load_model(path)


@pytest.fixture
def deepcopies(monkeypatch):
    """Counts tf2onnx's per-pass graph copies (``copy.deepcopy`` of a tf2onnx Graph in its optimizer loop)."""
    from tf2onnx import optimizer

    calls = []
    original = optimizer.copy.deepcopy

    class Counting:
        @staticmethod
        def deepcopy(obj, *args):
            calls.append(type(obj).__name__)
            return original(obj, *args)

    monkeypatch.setattr(optimizer, "copy", Counting)
    return calls


def test_conversion_copies_no_graph_and_matches_the_copying_mode(model, deepcopies, monkeypatch):
    import tf2onnx

    from deploykit.backend import tf
    from deploykit.export.convert import INPUT_NAME, keras_to_onnx

    proto = keras_to_onnx(model)
    assert "Graph" not in deepcopies, f"tf2onnx copied the graph {deepcopies.count('Graph')} times"

    monkeypatch.delenv("TF2ONNX_CATCH_ERRORS", raising=False)
    spec = [tf.TensorSpec((None, 9, 9, 3), tf.float32, name=INPUT_NAME)]
    default, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    assert "Graph" in deepcopies  # the default mode does copy (the spy sees it)
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in default.graph.node]
    weights = sorted(np.asarray(t.raw_data).tobytes() for t in proto.graph.initializer)
    assert weights == sorted(np.asarray(t.raw_data).tobytes() for t in default.graph.initializer)


def test_a_failing_optimizer_pass_is_skipped_as_before(model, monkeypatch, tmp_path):
    """A pass that raises: the conversion runs again in tf2onnx's copying mode (which skips the pass), and the
    same network's next conversion starts in that mode (one wasted in-place attempt per network, not per export)."""
    import tf2onnx
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    from deploykit.export import conversions as conversions_cache
    from deploykit.export import convert, export_onnx
    from deploykit.export.runtimes import OnnxRunner

    def broken(self, graph, iteration):
        raise RuntimeError("a pass that fails")

    conversions = []
    original = tf2onnx.convert.from_keras

    def counting(*args, **kwargs):
        conversions.append(kwargs.get("opset"))
        return original(*args, **kwargs)

    monkeypatch.setattr(TransposeOptimizer, "_optimize", broken)
    monkeypatch.setattr(tf2onnx.convert, "from_keras", counting)
    monkeypatch.setattr(convert, "_COPYING_ONLY", set())
    conversions_cache.clear()  # an export of this model in an earlier test would be served without converting
    export_onnx(model, tmp_path / "model.onnx")
    assert len(conversions) == 2  # in place (failed), then copying
    x = np.random.default_rng(0).standard_normal((5, 9, 9, 3)).astype(np.float32)
    got = OnnxRunner(tmp_path / "model.onnx").predict(x)
    np.testing.assert_allclose(got, model(x, training=False).numpy(), atol=1e-5)
    conversions_cache.clear()  # the same unchanged model is served from the cache: make the next export convert
    export_onnx(model, tmp_path / "again.onnx")
    assert len(conversions) == 3  # straight to the copying mode
