"""One conversion per model, reused by its other variants: the same artifacts, and never a stale one.

``export_onnx`` / ``export_tflite`` reuse the tf2onnx proto and the TFLite signature + SavedModel of a model they
converted before (:mod:`deploykit.export.conversions`) while that model object's weights and config are unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.export import conversions
from deploykit.export.model_cache import ENTRIES, ModelCache, fingerprint


@pytest.fixture
def tiny():
    """A tf_keras MLP with BatchNorm (non-trainable moving statistics are variables too)."""
    from deploykit.backend import keras

    def build(seed=0):
        keras.utils.set_random_seed(seed)
        return keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(5, activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )

    return build


def _counting():
    made = []

    def make(value):
        return lambda: made.append(value) or [value]

    return made, make


def test_same_unchanged_model_is_made_once(tiny):
    cache, model = ModelCache(), tiny()
    made, make = _counting()
    assert cache.get(model, "k", make(1)) == [1]
    assert cache.get(model, "k", make(2)) == [1]
    assert made == [1] and (cache.hits, cache.misses) == (1, 1)
    assert cache.get(model, "other key", make(3)) == [3]


def test_changed_weights_are_made_again(tiny):
    cache, model = ModelCache(), tiny()
    made, make = _counting()
    cache.get(model, "k", make(1))
    weights = model.get_weights()
    weights[0][0, 0] += 1e-6  # the smallest change of one weight
    model.set_weights(weights)
    assert cache.get(model, "k", make(2)) == [2]
    bn = model.layers[1]
    bn.moving_mean.assign(bn.moving_mean + 1.0)  # a non-trainable variable
    assert cache.get(model, "k", make(3)) == [3]
    assert made == [1, 2, 3]


def test_changed_config_is_made_again(tiny):
    cache, model = ModelCache(), tiny()
    made, make = _counting()
    cache.get(model, "k", make(1))
    model.layers[0].activation = __import__("tf_keras").activations.tanh  # in place, weights unchanged
    assert cache.get(model, "k", make(2)) == [2]


def test_another_model_with_equal_weights_is_not_served(tiny):
    cache, a, b = ModelCache(), tiny(seed=0), tiny(seed=0)
    b.set_weights(a.get_weights())
    made, make = _counting()
    cache.get(a, "k", make("a"))
    assert cache.get(b, "k", make("b")) == ["b"]


def test_callers_get_copies_and_evicted_values_are_dropped(tiny):
    dropped = []
    cache = ModelCache(copy=list, drop=dropped.append)
    models = [tiny() for _ in range(ENTRIES + 1)]
    first = cache.get(models[0], "k", lambda: [0])
    first.append("edited by the caller")
    assert cache.get(models[0], "k", lambda: [9]) == [0]
    for i, model in enumerate(models[1:], 1):
        cache.get(model, "k", lambda i=i: [i])
    assert dropped == [[0]]  # the least recently used one


def test_fingerprint_is_stable_and_sees_each_weight(tiny):
    model = tiny()
    assert fingerprint(model) == fingerprint(model)
    weights = model.get_weights()
    weights[-1][2] = np.nextafter(weights[-1][2], np.float32(1))
    model.set_weights(weights)
    assert fingerprint(model) != fingerprint(tiny())


# --- the exporters (real conversions, real runtimes) -------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_keras3(tmp_path_factory):
    """A Keras 3 convnet with BatchNorm and swish (a custom-gradient op), saved as users save it."""
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as deploykit does)

    keras.utils.set_random_seed(1)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="dense")(x)  # named: Keras numbers unnamed layers
    path = tmp_path_factory.mktemp("k3") / "model.keras"  # per process (dense_7 after other tests' models)
    keras.Model(inputs, outputs).save(path)
    return path


def _named_alike(graph) -> str:
    """The graph as text with tf2onnx's generated name suffixes (``Conv2D__25``) dropped: its counter is global to the
    process, so two conversions of one model differ in those numbers only."""
    import re

    return re.sub(r"__\d+", "__", str(graph))


def _fresh_export(export, *args, **kwargs):
    """The export with nothing cached before or after it: what it wrote before the cache existed."""
    conversions.clear()
    try:
        return export(*args, **kwargs)
    finally:
        conversions.clear()


@pytest.mark.slow  # six ONNX conversions and runs: ~10 s
def test_onnx_variants_from_one_conversion_equal_fresh_ones(saved_keras3, tmp_path):
    import onnx

    from deploykit import load_model
    from deploykit.export import OnnxRunner, export_onnx

    model = load_model(saved_keras3)
    x = np.random.default_rng(0).standard_normal((16, 10, 10, 3)).astype(np.float32)
    conversions.clear()
    before = conversions.ONNX.misses
    cached = {q: export_onnx(model, tmp_path / f"c_{q}.onnx", quantization=q) for q in ("float32", "float16")}
    cached["again"] = export_onnx(model, tmp_path / "c_again.onnx")
    assert conversions.ONNX.misses - before == 1, "one tf2onnx conversion for three exports"
    for name, quant in (("float32", "float32"), ("float16", "float16"), ("again", "float32")):
        fresh = _fresh_export(export_onnx, model, tmp_path / f"f_{name}.onnx", quantization=quant)
        got, want = onnx.load(str(cached[name].path)), onnx.load(str(fresh.path))
        assert _named_alike(got.graph) == _named_alike(want.graph), name
        np.testing.assert_array_equal(OnnxRunner(cached[name].path).predict(x), OnnxRunner(fresh.path).predict(x))


@pytest.mark.slow  # three TFLite conversions: ~10 s
def test_tflite_variants_from_one_save_equal_fresh_ones(saved_keras3, tmp_path):
    from deploykit import load_model
    from deploykit.export import export_tflite

    model = load_model(saved_keras3)
    conversions.clear()
    before = conversions.TFLITE.misses
    cached = {q: export_tflite(model, tmp_path / f"c_{q}.tflite", quantization=q) for q in ("float32", "float16")}
    assert conversions.TFLITE.misses - before == 1, "one trace and SavedModel for two variants"
    for quant, record in cached.items():
        fresh = _fresh_export(export_tflite, model, tmp_path / f"f_{quant}.tflite", quantization=quant)
        assert record.path.read_bytes() == fresh.path.read_bytes(), quant


@pytest.mark.slow  # four conversions and runs: ~15 s
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_weights_set_after_an_export_are_converted_again(saved_keras3, tmp_path, fmt):
    """Not served stale: the second file computes the changed model, as a fresh export of it does."""
    from deploykit import load_model
    from deploykit.export import OnnxRunner, TfliteRunner, export_onnx, export_tflite

    export, runner = (export_onnx, OnnxRunner) if fmt == "onnx" else (export_tflite, TfliteRunner)
    model = load_model(saved_keras3)
    x = np.random.default_rng(0).standard_normal((16, 10, 10, 3)).astype(np.float32)
    conversions.clear()
    first = runner(export(model, tmp_path / f"first.{fmt}").path).predict(x)
    model.set_weights([w * 1.5 + 0.1 for w in model.get_weights()])  # a fine-tune, as far as the cache can tell
    want = model(x, training=False).numpy()
    assert np.abs(want - first).max() > 1e-3, "the change moves the outputs"
    second = runner(export(model, tmp_path / f"second.{fmt}").path).predict(x)
    np.testing.assert_allclose(second, want, atol=1e-5)
    fresh = runner(_fresh_export(export, model, tmp_path / f"fresh.{fmt}").path).predict(x)
    np.testing.assert_array_equal(second, fresh)


@pytest.mark.slow  # four int8 ONNX exports (calibrated) and their fresh twins: ~15 s
def test_int8_variants_and_fallback_tries_share_the_prepared_models_conversion(saved_keras3, tmp_path):
    """int8-dynamic and int8-static on the same calibration share one int8 preparation (int8_prep's reuse), hence one
    conversion; an ``exclude`` try (the per-layer fallback's) too. Each file computes what a fresh export's does."""
    from deploykit import load_model
    from deploykit.export import OnnxRunner, QuantConfig, export_onnx

    model = load_model(saved_keras3)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((64, 10, 10, 3)).astype(np.float32)
    x = rng.standard_normal((16, 10, 10, 3)).astype(np.float32)
    tries = {
        "dynamic": dict(quantization="int8-dynamic"),
        "static": dict(quantization="int8-static"),
        "static_excluding": dict(quantization="int8-static", config=QuantConfig(exclude=("dense",))),
    }
    conversions.clear()
    before = conversions.ONNX.misses
    made = {
        name: export_onnx(model, tmp_path / f"c_{name}.onnx", calibration_data=data, **kw) for name, kw in tries.items()
    }
    assert conversions.ONNX.misses - before == 1, "one conversion of the prepared model for three int8 exports"
    for name, kw in tries.items():
        fresh = _fresh_export(export_onnx, model, tmp_path / f"f_{name}.onnx", calibration_data=data, **kw)
        np.testing.assert_array_equal(OnnxRunner(made[name].path).predict(x), OnnxRunner(fresh.path).predict(x))


def _keras3_model(kind: str):
    """Models as users build them: a swish CNN (custom-gradient ops), a tutorial MLP, an LSTM classifier."""
    import keras

    keras.utils.set_random_seed(2)
    if kind == "cnn":
        inputs = keras.Input((10, 10, 3))
        x = keras.layers.Conv2D(6, 3, activation="swish")(inputs)
        x = keras.layers.DepthwiseConv2D(3, padding="same", activation="swish")(x)
        x = keras.layers.Flatten()(x)
        return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
    if kind == "mlp":
        return keras.Sequential(
            [keras.Input((20,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax")]
        )
    return keras.Sequential([keras.Input((7, 5)), keras.layers.LSTM(8), keras.layers.Dense(3, activation="softmax")])


@pytest.mark.slow  # two conversions per variant and model: ~25 s in all
@pytest.mark.parametrize("kind", ["cnn", "mlp", "lstm"])
def test_lean_savedmodel_gives_the_converters_own_bytes(kind, tmp_path):
    """The SavedModel deploykit saves (no custom gradients, once per model) lowers to the flatbuffer the converter's
    own save gives, byte for byte, in each float variant and in int8-full."""
    from deploykit import load_model
    from deploykit.core.task import OutputKind
    from deploykit.export.config import QuantConfig, Quantization
    from deploykit.export.tflite_export import _convert

    path = tmp_path / "model.keras"
    _keras3_model(kind).save(path)
    model = load_model(path)
    shape = tuple(model.input_shape[1:])
    calibration = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
    with conversions.tflite_signature(model, shape, OutputKind.PROBABILITIES, cache=False) as lean:
        assert lean.folder is not None and lean.folder.is_dir()
        own = conversions.Signature(lean.model, lean.function, lean.module, None)  # the converter saves its own
        for quant in (Quantization.FLOAT32, Quantization.FLOAT16, Quantization.INT8_FULL):
            knobs = QuantConfig().for_variant(quant)
            assert _convert(lean, quant, calibration, knobs) == _convert(own, quant, calibration, knobs), quant
    assert not lean.folder.exists(), "an uncached SavedModel is removed after its export"


def test_a_forked_child_leaves_the_parents_savedmodels_alone():
    """The TFLite SavedModel folders are removed by the process that made them only (atexit in a forked child runs
    too), and a child's cache never reads its parent's entries."""
    import os

    from deploykit.export.tflite_saved import SavedSignatures

    folders = SavedSignatures()
    folder = folders.new_folder()
    folder.mkdir()
    pid = os.fork()
    if pid == 0:  # the child: what its eviction and its exit would do
        folders.remove(folder)
        folders.close()
        os._exit(0)
    os.waitpid(pid, 0)
    assert folder.is_dir()
    folders.close()
    assert not folder.exists()
