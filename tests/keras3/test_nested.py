"""Nested models and data augmentation in Keras 3 files, as the tutorials publish them (deploykit.core.nested).

The TensorFlow image classification tutorial nests a ``data_augmentation`` Sequential in its Sequential
model; keras.io's transfer learning calls a frozen keras.applications base (``training=False``) after
augmentation and a Rescaling. Both were refused ("a nested model"); they are read as one flat graph,
augmentation removed (Keras returns its input at inference), and compute what Keras 3 computes: in
tf_keras after the import, and in onnxruntime after ``deploykit export``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from deploykit.core.nested import INFERENCE_IDENTITY
from deploykit.errors import UnsupportedLayerError
from deploykit.io.models import load_model


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    return keras


#: Constructor arguments of the INFERENCE_IDENTITY layers that need some.
_ARGS = {
    "RandomRotation": {"factor": 0.2},
    "RandomZoom": {"height_factor": 0.2},
    "RandomTranslation": {"height_factor": 0.2, "width_factor": 0.2},
    "RandomContrast": {"factor": 0.5},
    "RandomBrightness": {"factor": 0.5},
    "RandomShear": {"x_factor": 0.3},
    "RandomHue": {"factor": 0.5},
    "RandomSaturation": {"factor": 0.5},
    "RandomSharpness": {"factor": 0.5},
    "RandomPosterization": {"factor": (1, 4)},
    "RandomColorDegeneration": {"factor": 0.5},
    "GaussianNoise": {"stddev": 0.5},
    "GaussianDropout": {"rate": 0.5},
}


def test_the_layers_removed_return_their_input_at_inference_and_change_it_in_training(k3):
    """The table is Keras's own behaviour: each layer returns its input unchanged when the model predicts."""
    # 32 rows: a random flip leaves 4 rows all unflipped one time in 16
    x = np.random.default_rng(0).uniform(0, 255, (32, 16, 12, 3)).astype(np.float32)
    changed = set()
    for name in sorted(INFERENCE_IDENTITY):
        layer = getattr(k3.layers, name)(**_ARGS.get(name, {}))
        out = np.asarray(layer(x, training=False))
        assert out.shape == x.shape and np.array_equal(out, x), name
        if np.asarray(layer(x, training=True)).shape != x.shape or not np.array_equal(layer(x, training=True), x):
            changed.add(name)
    assert {"RandomFlip", "RandomRotation", "RandomZoom", "GaussianNoise"} <= changed  # the check can tell


def _tutorial_model(k3):
    """tensorflow.org/tutorials/images/classification, with augmentation (8x8 grayscale here)."""
    layers = k3.layers
    data_augmentation = k3.Sequential(
        [layers.RandomFlip("horizontal", input_shape=(8, 8, 1)), layers.RandomRotation(0.1), layers.RandomZoom(0.1)]
    )
    return k3.Sequential(
        [
            data_augmentation,
            layers.Rescaling(1.0 / 255),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Dropout(0.2),
            layers.Flatten(),
            layers.Dense(32, activation="relu"),
            layers.Dense(10, name="outputs"),
        ]
    )


def _transfer_model(k3):
    """keras.io/guides/transfer_learning: augmentation, Rescaling, a frozen keras.applications base called with
    training=False, pooling, dropout, a logits head."""
    layers = k3.layers
    data_augmentation = k3.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)])
    base_model = k3.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), include_top=False, alpha=0.35)
    base_model.trainable = False
    inputs = k3.Input(shape=(32, 32, 3))
    x = data_augmentation(inputs)
    x = layers.Rescaling(scale=1 / 127.5, offset=-1)(x)
    x = base_model(x, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    return k3.Model(inputs, layers.Dense(10)(x))


def _randomize_batchnorm(k3, model, seed: int) -> None:
    """Moving statistics away from 0/1, so a BatchNorm read in training mode (or lost) would show."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, k3.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 1.5, var.shape),
                ]
            )


def _imported(k3, model, path, x):
    model.save(path)
    imported = load_model(path)
    diff = np.abs(imported(x, training=False).numpy() - np.asarray(model(x, training=False))).max()
    return imported, float(diff)


def test_the_image_tutorials_model_is_read_flat_without_augmentation(k3, tmp_path, caplog):
    model = _tutorial_model(k3)
    x = np.random.default_rng(1).uniform(0, 255, (32, 8, 8, 1)).astype(np.float32)
    with caplog.at_level("INFO", logger="deploykit.core.nested"):
        imported, diff = _imported(k3, model, tmp_path / "tutorial.keras", x)
    assert diff <= 1e-5
    kinds = [type(layer).__name__ for layer in imported.layers]
    assert not any(k.startswith("Random") or k in ("Sequential", "Functional") for k in kinds), kinds
    assert kinds[:2] == ["Rescaling", "Conv2D"]
    said = " ".join(r.getMessage() for r in caplog.records)
    from deploykit.core.nested import flattened

    assert " ".join(flattened(imported)) == said  # what the optimize report's notes carry
    assert re.search(r"removed, as Keras does at inference: random_flip\w* \(RandomFlip\), .*\(RandomZoom\)", said)


def test_a_frozen_keras_applications_base_is_inlined_with_its_weights(k3, tmp_path):
    model = _transfer_model(k3)
    _randomize_batchnorm(k3, model, 2)
    x = np.random.default_rng(2).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    imported, diff = _imported(k3, model, tmp_path / "transfer.keras", x)
    assert diff <= 1e-5
    names = {layer.name for layer in imported.layers}
    base = model.get_layer(index=3)
    assert base.name.startswith("mobilenetv2") and base.name not in names
    assert {layer.name for layer in base.layers if type(layer).__name__ != "InputLayer"} <= names
    np.testing.assert_array_equal(imported.get_layer("Conv1").get_weights()[0], base.get_layer("Conv1").kernel)
    assert all(layer.trainable for layer in imported.layers)  # a frozen base is a training choice


def test_models_nested_two_deep_and_a_nested_model_last(k3, tmp_path):
    layers = k3.layers
    inner = k3.Sequential([k3.Input((6,)), layers.Dense(5, activation="elu", name="deep")], name="inner")
    mid_in = k3.Input((6,))
    middle = k3.Model(mid_in, layers.Dense(4, name="mid_dense")(inner(mid_in)), name="middle")
    head = k3.Sequential([k3.Input((4,)), layers.Dense(3, activation="softmax", name="probs")], name="head")
    outer = k3.Sequential([k3.Input((6,)), layers.GaussianNoise(0.5), middle, head], name="outer")
    x = np.random.default_rng(3).normal(size=(20, 6)).astype(np.float32)
    imported, diff = _imported(k3, outer, tmp_path / "deep.keras", x)
    assert diff <= 1e-5
    assert [layer.name for layer in imported.layers if layer.weights] == ["deep", "mid_dense", "probs"]


def test_a_nested_layer_named_as_an_outer_one_is_refused_by_name(k3, tmp_path):
    layers = k3.layers
    block = k3.Sequential([k3.Input((4,)), layers.Dense(4, name="same")], name="block")
    inputs = k3.Input((4,))
    model = k3.Model(inputs, layers.Dense(2, name="same_")(block(layers.Dense(4, name="same")(inputs))))
    model.save(tmp_path / "clash.keras")
    with pytest.raises(UnsupportedLayerError, match="'same'.*inside the nested model 'block'"):
        load_model(tmp_path / "clash.keras")


@pytest.mark.slow
def test_exported_tutorial_and_transfer_models_compute_what_keras_3_computes(k3, tmp_path, cli):
    import onnxruntime as ort

    rng = np.random.default_rng(4)
    cases = {
        "tutorial": (_tutorial_model(k3), rng.uniform(0, 255, (200, 8, 8, 1))),
        "transfer": (_transfer_model(k3), rng.uniform(0, 255, (200, 32, 32, 3))),
    }
    for name, (model, x) in cases.items():
        x = x.astype(np.float32)
        model.save(tmp_path / f"{name}.keras")
        np.savez(tmp_path / f"{name}.npz", x=x, y=rng.integers(0, 10, len(x)))
        out = tmp_path / f"{name}_out"
        done = cli("export", tmp_path / f"{name}.keras", "--data", tmp_path / f"{name}.npz", "--formats", "onnx",
                   "--quantize", "float32", "--out", out)  # fmt: skip
        assert done.returncode == 0, done.stderr
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        want = np.asarray(model(x, training=False))
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4, name


def test_the_text_tutorials_export_model_is_refused_for_its_string_layer(k3, tmp_path):
    """tensorflow.org's basic text classification wraps its model in an ``export_model`` that takes strings: one
    line saying to give the model that reads token ids (before: 'option vocabulary_size=8 has no equivalent')."""
    texts = np.array(["good movie", "bad movie", "great film", "awful film"] * 4)
    vectorize = k3.layers.TextVectorization(max_tokens=20, output_mode="int", output_sequence_length=4)
    vectorize.adapt(texts)
    model = k3.Sequential([k3.layers.Embedding(20, 4), k3.layers.GlobalAveragePooling1D(), k3.layers.Dense(1)])
    export_model = k3.Sequential([vectorize, model, k3.layers.Activation("sigmoid")])
    export_model(np.array(["good"]))
    export_model.save(tmp_path / "export_model.keras")
    with pytest.raises(UnsupportedLayerError, match="TextVectorization: turns strings into token ids; .*not the"):
        load_model(tmp_path / "export_model.keras")


def test_the_data_augmentation_tutorials_resize_and_rescale_block_is_read(k3, tmp_path):
    """tensorflow.org's data augmentation tutorial: ``resize_and_rescale`` (Resizing, Rescaling) and
    ``data_augmentation`` Sequentials first in the model. Keras 3's Resizing carries ``fill_mode="constant"``,
    its default (used only with ``pad_to_aspect_ratio``), which tf_keras lacks: neutral, not refused."""
    layers = k3.layers
    resize_and_rescale = k3.Sequential([layers.Resizing(16, 16), layers.Rescaling(1.0 / 255)])
    data_augmentation = k3.Sequential([layers.RandomFlip("horizontal_and_vertical"), layers.RandomRotation(0.2)])
    model = k3.Sequential(
        [k3.Input((8, 8, 1)), resize_and_rescale, data_augmentation, layers.Conv2D(4, 3), layers.Flatten(),
         layers.Dense(3)]
    )  # fmt: skip
    x = np.random.default_rng(5).uniform(0, 255, (16, 8, 8, 1)).astype(np.float32)
    imported, diff = _imported(k3, model, tmp_path / "resize.keras", x)
    assert diff <= 1e-5
    assert [type(layer).__name__ for layer in imported.layers][:3] == ["Resizing", "Rescaling", "Conv2D"]


def test_shared_layers_are_read_as_one_layer_per_call_with_the_shared_weights(k3, tmp_path, caplog):
    """A siamese branch (a Dense and a BatchNormalization applied to two inputs) and the Keras docs' Attention
    example (one Embedding and one Conv1D for the query and the value) were refused: "called 2 times; deploykit
    reads layers called once". Each call is now a layer of its own holding the shared weights, said in one line."""
    L = k3.layers
    left, right = k3.Input((6,), name="left"), k3.Input((6,), name="right")
    tower, norm = L.Dense(5, activation="relu", name="tower"), L.BatchNormalization(name="norm")
    joined = L.Concatenate()([norm(tower(left)), norm(tower(L.Dense(6)(right)))])
    siamese = k3.Model([left, right], L.Dense(3, activation="softmax")(joined))
    _randomize_batchnorm(k3, siamese, 0)
    query, value = k3.Input((7,), dtype="int64", name="query"), k3.Input((7,), dtype="int64", name="value")
    embed, conv = L.Embedding(20, 4, name="embedding"), L.Conv1D(6, 3, padding="same", name="conv1d")
    q, v = conv(embed(query)), conv(embed(value))
    pooled = L.Concatenate()([L.GlobalAveragePooling1D()(q), L.GlobalAveragePooling1D()(L.Attention()([q, v]))])
    attention = k3.Model([query, value], L.Dense(3, activation="softmax")(pooled))
    from deploykit.core.multi_io_model import packing_of

    rng = np.random.default_rng(3)
    cases = [
        (siamese, {n: rng.normal(size=(16, 6)).astype(np.float32) for n in ("left", "right")}, {"tower", "norm"}),
        (attention, {n: rng.integers(0, 20, (16, 7)) for n in ("query", "value")}, {"embedding", "conv1d"}),
    ]
    for k, (model, xs, shared) in enumerate(cases):
        model.save(tmp_path / f"shared{k}.keras")
        with caplog.at_level("INFO", logger="deploykit.core.nested"):
            imported = load_model(tmp_path / f"shared{k}.keras")  # two inputs: packed side by side, in name order
        packed = packing_of(imported).layout.join_inputs({n: v.astype(np.float32) for n, v in xs.items()})
        assert np.abs(imported(packed).numpy() - np.asarray(model(xs))).max() <= 1e-5
        for name in shared:
            first, second = imported.get_layer(name), imported.get_layer(f"{name}_call2")
            assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights()))
        said = " ".join(r.getMessage() for r in caplog.records)
        assert all(f"{name} (2 calls)" in said for name in shared), said


def test_a_shared_encoder_model_called_on_each_input_is_one_copy_per_call(k3, tmp_path):
    """keras.io's siamese networks call one encoder model on each image; a functional encoder holding a Sequential
    block, called on two inputs, was refused ("a nested model called 2 times"). Each call is now a copy whose layers,
    at every depth, are renamed and hold the shared weights (BatchNorm statistics included)."""
    from deploykit.core.multi_io_model import packing_of

    L = k3.layers
    block = k3.Sequential([k3.Input((6,)), L.BatchNormalization(name="norm"), L.Dense(6, name="mix")], name="block")
    encoder_in = k3.Input((4,))
    encoder = k3.Model(encoder_in, block(L.Dense(6, activation="relu", name="embed")(encoder_in)), name="encoder")
    left, right = k3.Input((4,), name="left"), k3.Input((4,), name="right")
    siamese = k3.Model([left, right], L.Dense(1, activation="sigmoid")(L.Subtract()([encoder(left), encoder(right)])))
    _randomize_batchnorm(k3, siamese, 1)
    siamese.save(tmp_path / "siamese.keras")
    imported = load_model(tmp_path / "siamese.keras")
    rng = np.random.default_rng(8)
    xs = {n: rng.normal(size=(16, 4)).astype(np.float32) for n in ("left", "right")}
    got = imported(packing_of(imported).layout.join_inputs(xs)).numpy()
    assert np.abs(got - np.asarray(siamese([xs["left"], xs["right"]]))).max() <= 1e-5
    for name in ("embed", "norm", "mix"):
        first, second = (imported.get_layer(n).get_weights() for n in (name, f"{name}_call2"))
        assert all(np.array_equal(a, b) for a, b in zip(first, second))
