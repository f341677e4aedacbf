"""Custom Keras 3 layers read as what their call computes, when their code is given (deploykit.keras3.inline).

The classes are published ones (:mod:`tests.custom_models`; keras.io's CCT classes here): keras.io's
"Text classification with Transformer" blocks, the Keras subclassing guide's ``Linear`` layer and ``MLPBlock``
model, keras.io's ViT ``Patches`` / ``PatchEncoder`` and CCT ``StochasticDepth`` / ``SequencePooling``, with the
``get_config`` and registration the Keras saving guide adds so a model holding them saves. Each rebuild is
compared with the user's model, custom code included, and the artifacts run in onnxruntime.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from deploykit.errors import UnsupportedLayerError, UsageError
from deploykit.io.models import load_model
from tests.custom_models import GUIDE_PY, TRANSFORMER_PY, VIT_PY, user_module

VOCAB, MAXLEN = 50, 12


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    return keras


def _token_data(n: int = 600):
    """Ids 1..VOCAB-1; the label: whether id 7 occurs (a Transformer learns it in a few epochs)."""
    rng = np.random.default_rng(0)
    x = rng.integers(1, VOCAB, (n, MAXLEN))
    y = (x == 7).any(axis=1).astype(np.int64)
    return x.astype(np.float32), y


def _transformer(k3, module, x, y, tmp_path):
    """keras.io's classifier (smaller dims), trained briefly and saved as a Keras 3 file."""
    k3.utils.set_random_seed(0)
    inputs = k3.layers.Input(shape=(MAXLEN,))
    h = module.TokenAndPositionEmbedding(MAXLEN, VOCAB, 16)(inputs)
    h = module.TransformerBlock(16, 2, 16)(h)
    h = k3.layers.GlobalAveragePooling1D()(h)
    h = k3.layers.Dropout(0.1)(h)
    h = k3.layers.Dense(20, activation="relu")(h)
    h = k3.layers.Dropout(0.1)(h)
    outputs = k3.layers.Dense(2, activation="softmax")(h)
    model = k3.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    model.save(tmp_path / "transformer.keras")
    return model, tmp_path / "transformer.keras"


def test_keras_io_transformer_blocks_are_read_as_built_in_layers_equal_to_the_users_model(k3, tmp_path):
    _path, module = user_module(TRANSFORMER_PY, tmp_path, "InlineApi")  # registered here, as an API user's are
    x, y = _token_data()
    user, path = _transformer(k3, module, x, y, tmp_path)
    model = load_model(path)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "TransformerBlock" not in kinds and "TokenAndPositionEmbedding" not in kinds
    assert {"Embedding", "MultiHeadAttention", "LayerNormalization", "Dense", "Rescaling", "Add"} <= kinds
    # the block's feed-forward Dense layers are the model's own now (prunable), besides the head's two
    assert sum(type(layer).__name__ == "Dense" for layer in model.layers) == 4
    expected = np.asarray(user(x[:200], training=False))
    assert np.abs(model(x[:200], training=False).numpy() - expected).max() <= 1e-5


def test_the_cli_reads_custom_layers_from_the_file_given_and_refuses_them_without_it(k3, tmp_path):
    layers_file, module = user_module(TRANSFORMER_PY, tmp_path, "InlineCli")
    x, y = _token_data()
    user, path = _transformer(k3, module, x, y, tmp_path)
    np.savez(tmp_path / "tokens.npz", x=x, y=y)
    base = [sys.executable, "-m", "deploykit.cli.main", "export", str(path), "--data", str(tmp_path / "tokens.npz")]
    base += ["--formats", "onnx", "--quantize", "float32"]

    refused = subprocess.run([*base, "--out", str(tmp_path / "no")], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1
    assert "of type InlineCli>TokenAndPositionEmbedding: a custom layer class, and its code was not given" in (
        refused.stderr
    )
    assert "--custom-objects FILE.py" in refused.stderr and not (tmp_path / "no").exists()

    out = tmp_path / "out"
    done = subprocess.run(
        [*base, "--out", str(out), "--custom-objects", str(layers_file)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "custom layers read as what their call computes" in done.stderr
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:200]})[0]
    assert np.abs(got - np.asarray(user(x[:200], training=False))).max() <= 1e-4


def test_a_layers_own_weight_used_in_ops_is_read_as_a_constant(k3, tmp_path):
    # the Keras saving guide's pattern: a weight made in build() and used in call(); and a custom layer calling
    # another one (inlined in a second round), in a Sequential model
    @k3.saving.register_keras_serializable(package="InlineWeight")
    class LearnedPosition(k3.layers.Layer):
        def build(self, shape):
            self.pos = self.add_weight(shape=(shape[1], shape[2]), initializer="random_normal", name="pos")

        def call(self, x):
            return x + self.pos

    @k3.saving.register_keras_serializable(package="InlineWeight")
    class Block(k3.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.position = LearnedPosition()
            self.dense = k3.layers.Dense(3, activation="relu")

        def call(self, x):
            return self.dense(self.position(x)) * 0.5

    model = k3.Sequential([k3.Input((4, 3)), k3.layers.Dense(3), Block(), k3.layers.Flatten(), k3.layers.Dense(2)])
    xs = np.random.default_rng(1).normal(size=(32, 4, 3)).astype(np.float32)
    model(xs)
    model.save(tmp_path / "weight.keras")
    imported = load_model(tmp_path / "weight.keras")
    assert np.abs(imported(xs, training=False).numpy() - np.asarray(model(xs))).max() <= 1e-5
    offsets = [np.asarray(layer.offset) for layer in imported.layers if type(layer).__name__ == "Rescaling"]
    assert any(o.shape == (4, 3) for o in offsets)  # the learned position table, one value per position and channel


def test_a_call_that_cannot_be_traced_is_refused_by_name(k3, tmp_path):
    @k3.saving.register_keras_serializable(package="InlineBranch")
    class Branchy(k3.layers.Layer):
        def call(self, x):
            if k3.ops.convert_to_numpy(k3.ops.mean(x)) > 0:  # Python control flow on a value
                return x
            return -x

    model = k3.Sequential([k3.Input((4,)), Branchy(name="branchy"), k3.layers.Dense(2)])
    model.save(tmp_path / "branchy.keras")
    with pytest.raises(UnsupportedLayerError, match=r"'branchy' of type Branchy: a custom layer whose call cannot be"):
        load_model(tmp_path / "branchy.keras")


def test_a_constant_that_would_widen_a_sample_is_refused(k3, tmp_path):
    inputs = k3.Input((4, 1))
    wider = k3.Model(inputs, k3.layers.Dense(2)(inputs + np.ones((4, 3), np.float32)))  # [N, 4, 1] -> [N, 4, 3]
    wider.save(tmp_path / "wider.keras")
    widens = r"shape \(4, 3\) does not broadcast into a sample of shape \(4, 1\)"
    with pytest.raises(UnsupportedLayerError, match=widens):
        load_model(tmp_path / "wider.keras")


def test_custom_objects_files_that_cannot_be_imported_are_one_line(tmp_path):
    from deploykit.keras3.inline import import_custom_objects

    broken = tmp_path / "broken.py"
    broken.write_text("import keras\nraise RuntimeError('the user file fails')\n")
    with pytest.raises(UsageError, match=r"--custom-objects .*broken.py: importing it failed \(RuntimeError: the"):
        import_custom_objects([broken])
    quits = tmp_path / "quits.py"
    quits.write_text("import sys\nsys.exit(3)\n")  # a script run as a module: one line, not a silent exit
    with pytest.raises(UsageError, match=r"quits.py: importing it failed \(SystemExit: 3\)"):
        import_custom_objects([quits])
    with pytest.raises(UsageError, match="missing.py: no such file"):
        import_custom_objects([tmp_path / "missing.py"])
    (tmp_path / "notes.txt").write_text("class A: pass\n")
    with pytest.raises(UsageError, match="notes.txt: not a Python file"):
        import_custom_objects([tmp_path / "notes.txt"])


def test_the_keras_guides_subclassed_model_and_linear_layer_are_read_as_dense_layers(k3, tmp_path):
    mlp_block = user_module(GUIDE_PY, tmp_path, "InlineGuide")[1].MLPBlock
    x = np.random.default_rng(2).normal(size=(64, 64)).astype(np.float32)
    model = mlp_block()
    model.compile("adam", k3.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.arange(64) % 10, epochs=1, verbose=0)
    model.save(tmp_path / "mlp.keras")
    imported = load_model(tmp_path / "mlp.keras")
    assert np.abs(imported(x, training=False).numpy() - np.asarray(model(x))).max() <= 1e-5
    dense = [layer for layer in imported.layers if type(layer).__name__ == "Dense"]
    assert [layer.units for layer in dense] == [32, 32, 10]  # x @ W: a Dense layer whose kernel is W
    assert {type(layer).__name__ for layer in imported.layers} >= {"ReLU", "Rescaling"}  # relu(x), + b


def test_a_subclassed_model_without_its_code_or_never_built_is_refused_by_name(k3, tmp_path):
    mlp_block = user_module(GUIDE_PY, tmp_path, "InlineGuideUnbuilt")[1].MLPBlock
    unbuilt = mlp_block(name="unbuilt")
    unbuilt.save(tmp_path / "unbuilt.keras")
    with pytest.raises(UnsupportedLayerError, match="'unbuilt' of type MLPBlock: a subclassed model saved before it"):
        load_model(tmp_path / "unbuilt.keras")
    k3.saving.get_custom_objects().pop("InlineGuideUnbuilt>MLPBlock")
    with pytest.raises(UnsupportedLayerError, match="a subclassed model, and its code was not given"):
        load_model(tmp_path / "unbuilt.keras")


def test_keras_io_vision_transformer_patches_are_read_and_export_equal_to_the_users_model(k3, tmp_path):
    # create_vit_classifier's blocks (smaller): its layers.Add() layers are named add, add_1... by the file, as the
    # x + positions inside PatchEncoder is by Keras when traced: the inlined operations take other names
    from deploykit.export.onnx_export import export_onnx

    vit = user_module(VIT_PY, tmp_path, "InlineVit")[1]
    patches, patch_encoder = vit.Patches, vit.PatchEncoder
    layers = k3.layers
    inputs = k3.Input(shape=(12, 12, 2))
    encoded = patch_encoder(9, 8)(patches(4)(inputs))
    for block in range(2):  # named as a fresh Keras process names them
        x1 = layers.LayerNormalization(epsilon=1e-6)(encoded)
        attention = layers.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.1)(x1, x1)
        x2 = layers.Add(name="add" if block == 0 else "add_2")([attention, encoded])
        x3 = layers.Dense(8, activation=k3.activations.gelu)(layers.LayerNormalization(epsilon=1e-6)(x2))
        encoded = layers.Add(name=f"add_{2 * block + 1}")([x3, x2])
    logits = layers.Dense(3)(layers.Flatten()(layers.LayerNormalization(epsilon=1e-6)(encoded)))
    model = k3.Model(inputs=inputs, outputs=logits)
    xs = np.random.default_rng(3).uniform(size=(32, 12, 12, 2)).astype(np.float32)
    model.save(tmp_path / "vit.keras")
    k3.utils.clear_session()  # Keras' name counters as in the user's fresh process: the traced x + p is "add"
    imported = load_model(tmp_path / "vit.keras")
    expected = np.asarray(model(xs, training=False))
    assert np.abs(imported(xs, training=False).numpy() - expected).max() <= 1e-5
    assert len({layer.name for layer in imported.layers}) == len(imported.layers)
    export_onnx(imported, tmp_path / "vit.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: xs})[0]
    assert np.abs(got - expected).max() <= 1e-4


def test_a_live_keras3_model_gives_its_own_custom_classes_to_the_api(k3, tmp_path):
    # a notebook's model object: its Linear class is not registered anywhere; the object is its code
    import deploykit

    class Linear(k3.layers.Layer):
        def __init__(self, units=8, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal")

        def call(self, inputs):
            return k3.ops.matmul(inputs, self.w)

    model = k3.Sequential([k3.Input((6,)), Linear(8), k3.layers.BatchNormalization(), k3.layers.Dense(3)])
    xs = np.random.default_rng(4).normal(size=(64, 6)).astype(np.float32)
    model.compile("adam", "mse")
    model.fit(xs, xs[:, :3], epochs=2, verbose=0)  # BatchNorm statistics away from their start
    folded, _report = deploykit.fold_batchnorm(model)
    assert type(folded).__module__.startswith("keras.")  # a Keras 3 object back
    assert "BatchNormalization" not in {type(layer).__name__ for layer in folded.layers}
    assert np.abs(np.asarray(folded(xs)) - np.asarray(model(xs, training=False))).max() <= 1e-5


def test_a_subclassed_model_built_on_a_dict_of_inputs_is_traced_on_one(k3, tmp_path):
    @k3.saving.register_keras_serializable(package="InlineDict")
    class TwoTower(k3.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.wide = k3.layers.Dense(8, activation="relu")
            self.deep = k3.layers.Dense(8, activation="relu")
            self.head = k3.layers.Dense(3, activation="softmax")

        def call(self, inputs):
            return self.head(k3.layers.concatenate([self.wide(inputs["wide"]), self.deep(inputs["deep"])]))

    rng = np.random.default_rng(5)
    x = {"wide": rng.normal(size=(64, 5)).astype(np.float32), "deep": rng.normal(size=(64, 6)).astype(np.float32)}
    model = TwoTower()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, np.arange(64) % 3, epochs=1, verbose=0)
    model.save(tmp_path / "towers.keras")
    imported = load_model(tmp_path / "towers.keras")  # packed: one input holding both, in the config's order
    from deploykit.core.multi_io_model import unpack_model

    plain = unpack_model(imported)
    feed = [x[t.name.split(":")[0]] for t in plain.inputs]
    assert sorted(t.name.split(":")[0] for t in plain.inputs) == ["deep", "wide"]
    assert np.abs(plain(feed, training=False).numpy() - np.asarray(model(x))).max() <= 1e-5


def test_keras_io_cct_stochastic_depth_and_sequence_pooling_are_read(k3, tmp_path):
    # keras.io's "Compact Convolutional Transformers", its classes as published: StochasticDepth branches on
    # `training` (None when traced: the identity a predicting model is), SequencePooling multiplies two tensors
    layers, ops = k3.layers, k3.ops

    @k3.saving.register_keras_serializable(package="InlineCct")
    class StochasticDepth(layers.Layer):
        def __init__(self, drop_prop, **kwargs):
            super().__init__(**kwargs)
            self.drop_prob = drop_prop
            self.seed_generator = k3.random.SeedGenerator(1337)

        def call(self, x, training=None):
            if training:
                keep_prob = 1 - self.drop_prob
                shape = (ops.shape(x)[0],) + (1,) * (len(ops.shape(x)) - 1)
                random_tensor = keep_prob + k3.random.uniform(shape, 0, 1, seed=self.seed_generator)
                random_tensor = ops.floor(random_tensor)
                return (x / keep_prob) * random_tensor
            return x

        def get_config(self):
            return {**super().get_config(), "drop_prop": self.drop_prob}

    @k3.saving.register_keras_serializable(package="InlineCct")
    class SequencePooling(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.attention = layers.Dense(1)

        def call(self, x):
            attention_weights = ops.softmax(self.attention(x), axis=1)
            attention_weights = ops.transpose(attention_weights, axes=(0, 2, 1))
            weighted_representation = ops.matmul(attention_weights, x)
            return ops.squeeze(weighted_representation, -2)

    inputs = layers.Input((10, 6))
    x1 = layers.LayerNormalization(epsilon=1e-5)(inputs)
    attention = StochasticDepth(0.1)(layers.MultiHeadAttention(num_heads=2, key_dim=6)(x1, x1))
    encoded = layers.Add()([attention, inputs])
    logits = layers.Dense(3)(SequencePooling()(layers.LayerNormalization(epsilon=1e-5)(encoded)))
    model = k3.Model(inputs, logits)
    model.save(tmp_path / "cct.keras")
    xs = np.random.default_rng(6).normal(size=(32, 10, 6)).astype(np.float32)
    imported = load_model(tmp_path / "cct.keras")
    assert np.abs(imported(xs, training=False).numpy() - np.asarray(model(xs, training=False))).max() <= 1e-5
    assert "Dot" in {type(layer).__name__ for layer in imported.layers}


def test_custom_layers_inside_nested_models_are_inlined_and_named_apart(k3, tmp_path):
    # a Sequential block holding a custom layer, beside an augmentation Sequential and a layer named as the block's
    @k3.saving.register_keras_serializable(package="InlineNested")
    class Doubled(k3.layers.Layer):
        def call(self, x):
            return x * 2.0

    augmentation = k3.Sequential([k3.layers.RandomFlip("horizontal"), k3.layers.Rescaling(1 / 255.0)])
    block = k3.Sequential([k3.Input((8, 8, 1)), k3.layers.Conv2D(4, 3, name="conv"), Doubled()], name="block")
    inputs = k3.Input((8, 8, 1))
    h = block(Doubled()(augmentation(inputs)))
    h = k3.layers.Conv2D(4, 1, name="conv_1")(k3.layers.Conv2D(4, 1, name="conv")(h))  # the block's names
    model = k3.Model(inputs, k3.layers.Dense(2, activation="softmax")(k3.layers.Flatten()(h)))
    model.save(tmp_path / "nested.keras")
    xs = np.random.default_rng(7).uniform(0, 255, (16, 8, 8, 1)).astype(np.float32)
    k3.utils.clear_session()
    imported = load_model(tmp_path / "nested.keras")
    assert np.abs(imported(xs, training=False).numpy() - np.asarray(model(xs, training=False))).max() <= 1e-5
    names = [layer.name for layer in imported.layers]
    assert len(set(names)) == len(names) and sum(n.startswith("conv") for n in names) == 3


def test_a_custom_object_scope_gives_the_code_as_keras_load_model_takes_it(k3, tmp_path):
    class Shifted(k3.layers.Layer):  # not registered: the scope is how the caller gives it, as to Keras
        def call(self, x):
            return x + 1.5

    model = k3.Sequential([k3.Input((3,)), Shifted(name="shifted"), k3.layers.Dense(2)])
    model.save(tmp_path / "shifted.keras")
    with pytest.raises(UnsupportedLayerError, match="custom_object_scope"):
        load_model(tmp_path / "shifted.keras")
    xs = np.random.default_rng(8).normal(size=(8, 3)).astype(np.float32)
    with k3.saving.custom_object_scope({"Shifted": Shifted}):
        imported = load_model(tmp_path / "shifted.keras")
    assert np.abs(imported(xs, training=False).numpy() - np.asarray(model(xs))).max() <= 1e-5


def test_a_built_in_layer_with_a_registered_custom_activation_is_traced(k3, tmp_path):
    @k3.saving.register_keras_serializable(package="InlineAct")
    def leaky_swish(x):
        return x * k3.ops.sigmoid(x) + 0.1 * k3.ops.relu(-x)

    model = k3.Sequential(
        [k3.Input((6,)), k3.layers.Dense(5, activation=leaky_swish, name="hidden"), k3.layers.Dense(2)]
    )
    model.save(tmp_path / "act.keras")
    xs = np.random.default_rng(9).normal(size=(32, 6)).astype(np.float32)
    imported = load_model(tmp_path / "act.keras")
    assert np.abs(imported(xs, training=False).numpy() - np.asarray(model(xs))).max() <= 1e-5
    k3.saving.get_custom_objects().pop("InlineAct>leaky_swish")
    with pytest.raises(UnsupportedLayerError, match="'hidden' of type Dense: it computes with the custom function"):
        load_model(tmp_path / "act.keras")
