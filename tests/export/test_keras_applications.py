"""keras.applications models, built in Keras 3 and saved as ``.keras``, through deploykit export (issue 20).

One representative per family (the cheapest member; ``benchmarks/bench_zoo.py`` runs every constructor):
built with ``weights=None`` at the smallest input it accepts and ``classes=3``, BatchNorm statistics (and
ConvNeXt's LayerScale) randomized so the fold and the comparison mean something, saved with
``model.save``. deploykit imports the file (its own check against Keras 3 included), writes float32 ONNX and
TFLite, compared with **Keras 3's** outputs, and the int8-dynamic ONNX, run. (The benchmark also runs the
validated ``export_bundle``, the fold, int8-full TFLite and MC per architecture.) The models
exercise what the Keras 3 import rewrites: MobileNetV3's operation layers on constants (``x + 3.0``,
``x * (1/6)``), ConvNeXt's nested Sequential blocks and LayerScale, EfficientNet's drop-connect Dropout
(``noise_shape``, sampled by the MC graph).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow

#: (constructor, input side): the smallest side each accepts with weights=None. The light ones run in the
#: slow suite (about 45 CPU seconds each on 2 cores); the heavy ones (more layers or parameters) run in
#: benchmarks/bench_zoo.py, and here too with DEPLOYKIT_ZOO_ALL=1.
LIGHT = [("MobileNetV3Small", 32), ("MobileNetV2", 32), ("EfficientNetB0", 32)]
HEAVY = [
    ("MobileNet", 32),
    ("EfficientNetV2B0", 32),
    ("ConvNeXtTiny", 32),
    ("ResNet50V2", 32),
    ("DenseNet121", 32),
    ("NASNetMobile", 32),
    ("Xception", 71),
    ("InceptionV3", 75),
    ("VGG16", 32),
]
_ALL = bool(os.environ.get("DEPLOYKIT_ZOO_ALL"))
REPRESENTATIVES = LIGHT + [
    pytest.param(
        *case,
        marks=pytest.mark.skipif(
            not _ALL, reason="heavy: run by benchmarks/bench_zoo.py (or here with DEPLOYKIT_ZOO_ALL=1)"
        ),
    )
    for case in HEAVY
]
TOLERANCE = 1e-4  # float32 artifacts vs Keras 3 (the outputs are probabilities)


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    return keras


def _randomize(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    draws = {
        "gamma": lambda s: rng.uniform(0.8, 1.2, s),
        "beta": lambda s: rng.normal(0, 0.1, s),
        "moving_mean": lambda s: rng.normal(0, 0.1, s),
        "moving_variance": lambda s: rng.uniform(0.8, 1.2, s),
    }
    for layer in _layers(model):
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([draws[w.path.split("/")[-1]](tuple(w.shape)).astype("float32") for w in layer.weights])
        elif type(layer).__name__ == "LayerScale":
            layer.set_weights([rng.uniform(0.5, 1.0, tuple(w.shape)).astype("float32") for w in layer.weights])


def _layers(model):
    for layer in model.layers:
        yield from _layers(layer) if hasattr(layer, "layers") else (layer,)


@pytest.mark.parametrize(("name", "side"), REPRESENTATIVES, ids=[n for n, _ in LIGHT + HEAVY])
def test_keras_application_exports_like_keras(k3, tmp_path, name, side):
    from deploykit import export_variant, load_model
    from deploykit.export.runtimes import OnnxRunner, TfliteRunner

    source = getattr(k3.applications, name)(weights=None, input_shape=(side, side, 3), classes=3)
    _randomize(source)
    x = np.random.default_rng(1).standard_normal((8, side, side, 3)).astype(np.float32)
    expected = np.asarray(source(x, training=False), np.float64)
    source.save(tmp_path / "model.keras")

    model = load_model(tmp_path / "model.keras")
    for fmt, runner in (("onnx", OnnxRunner), ("tflite", TfliteRunner)):
        export_variant(model, fmt, "float32", tmp_path / f"model.{fmt}")
        got = runner(tmp_path / f"model.{fmt}").predict(x)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= TOLERANCE, fmt

    export_variant(model, "onnx", "int8-dynamic", tmp_path / "int8.onnx")
    int8 = OnnxRunner(tmp_path / "int8.onnx").predict(x)
    assert int8.shape == expected.shape and np.isfinite(int8).all()
    assert np.allclose(int8.sum(axis=1), 1.0, atol=1e-4)  # still the softmax's probabilities
    _check_mc(model, x)


def _check_mc(model, x) -> None:
    """A model with drop-connect Dropout (EfficientNet: noise_shape (None, 1, 1, 1)) gets an MC graph that samples
    it."""
    import onnxruntime as ort

    from deploykit.core.graph import graph_from_model
    from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph, dropout_layers

    graph = graph_from_model(model)
    if not any(s.config.get("noise_shape") is not None for s in dropout_layers(graph)):
        return
    sess = ort.InferenceSession(
        build_mc_graph(graph, MCConfig(samples=20)).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    mean, std = sess.run(["mean", "std"], {"input": x[:2]})
    assert np.allclose(mean.sum(axis=1), 1.0, atol=1e-5) and std.max() > 0  # the samples differ
