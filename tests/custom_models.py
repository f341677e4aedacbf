"""Custom Keras 3 classes as their authors publish them: the source of a user's own module.

``TRANSFORMER_PY``: keras.io's "Text classification with Transformer" (``TransformerBlock``,
``TokenAndPositionEmbedding``). ``GUIDE_PY``: the Keras guide "Making new layers and models via subclassing"
(``Linear``, its weights made in ``build`` and used through ``ops.matmul``; ``MLPBlock``, a ``keras.Model``
subclass). ``VIT_PY``: keras.io's "Image classification with Vision Transformer" (``Patches``, ``PatchEncoder``).
Each with the ``get_config`` and registration the Keras saving guide adds so that a model holding them saves;
``{package}`` is the registration's package (each test its own, so registrations made in one process do not meet).
The texts are what a user's ``layers.py`` holds: given to ``--custom-objects``, imported by their training script
(here with :func:`user_module`, or in a plain Keras 3 process), and run by ``benchmarks/bench_foreign.py``.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

TRANSFORMER_PY = textwrap.dedent(
    """
    import keras
    from keras import layers, ops


    @keras.saving.register_keras_serializable(package="{package}")
    class TransformerBlock(layers.Layer):
        def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
            super().__init__(**kwargs)
            self.embed_dim, self.num_heads, self.ff_dim, self.rate = embed_dim, num_heads, ff_dim, rate
            self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
            self.ffn = keras.Sequential([layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)])
            self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
            self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
            self.dropout1 = layers.Dropout(rate)
            self.dropout2 = layers.Dropout(rate)

        def call(self, inputs):
            attn_output = self.att(inputs, inputs)
            attn_output = self.dropout1(attn_output)
            out1 = self.layernorm1(inputs + attn_output)
            ffn_output = self.ffn(out1)
            ffn_output = self.dropout2(ffn_output)
            return self.layernorm2(out1 + ffn_output)

        def get_config(self):
            config = super().get_config()
            config.update(embed_dim=self.embed_dim, num_heads=self.num_heads, ff_dim=self.ff_dim, rate=self.rate)
            return config


    @keras.saving.register_keras_serializable(package="{package}")
    class TokenAndPositionEmbedding(layers.Layer):
        def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
            super().__init__(**kwargs)
            self.maxlen, self.vocab_size, self.embed_dim = maxlen, vocab_size, embed_dim
            self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
            self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

        def call(self, x):
            maxlen = ops.shape(x)[-1]
            positions = ops.arange(start=0, stop=maxlen, step=1)
            positions = self.pos_emb(positions)
            x = self.token_emb(x)
            return x + positions

        def get_config(self):
            config = super().get_config()
            config.update(maxlen=self.maxlen, vocab_size=self.vocab_size, embed_dim=self.embed_dim)
            return config
    """
)

GUIDE_PY = textwrap.dedent(
    """
    import keras
    from keras import layers, ops


    @keras.saving.register_keras_serializable(package="{package}")
    class Linear(layers.Layer):
        def __init__(self, units=32, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal")
            self.b = self.add_weight(shape=(self.units,), initializer="random_normal")

        def call(self, inputs):
            return ops.matmul(inputs, self.w) + self.b

        def get_config(self):
            return {**super().get_config(), "units": self.units}


    @keras.saving.register_keras_serializable(package="{package}")
    class MLPBlock(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.linear_1 = Linear(32)
            self.linear_2 = Linear(32)
            self.linear_3 = Linear(10)

        def call(self, inputs):
            x = self.linear_1(inputs)
            x = keras.activations.relu(x)
            x = self.linear_2(x)
            x = keras.activations.relu(x)
            return self.linear_3(x)
    """
)


VIT_PY = textwrap.dedent(
    """
    import keras
    from keras import layers, ops


    @keras.saving.register_keras_serializable(package="{package}")
    class Patches(layers.Layer):
        def __init__(self, patch_size, **kwargs):
            super().__init__(**kwargs)
            self.patch_size = patch_size

        def call(self, images):
            input_shape = ops.shape(images)
            batch_size = input_shape[0]
            height = input_shape[1]
            width = input_shape[2]
            channels = input_shape[3]
            num_patches_h = height // self.patch_size
            num_patches_w = width // self.patch_size
            patches = keras.ops.image.extract_patches(images, size=self.patch_size)
            patches = ops.reshape(
                patches,
                (
                    batch_size,
                    num_patches_h * num_patches_w,
                    self.patch_size * self.patch_size * channels,
                ),
            )
            return patches

        def get_config(self):
            config = super().get_config()
            config.update({"patch_size": self.patch_size})
            return config


    @keras.saving.register_keras_serializable(package="{package}")
    class PatchEncoder(layers.Layer):
        def __init__(self, num_patches, projection_dim, **kwargs):
            super().__init__(**kwargs)
            self.num_patches = num_patches
            self.projection_dim = projection_dim
            self.projection = layers.Dense(units=projection_dim)
            self.position_embedding = layers.Embedding(input_dim=num_patches, output_dim=projection_dim)

        def call(self, patch):
            positions = ops.expand_dims(ops.arange(start=0, stop=self.num_patches, step=1), axis=0)
            projected_patches = self.projection(patch)
            encoded = projected_patches + self.position_embedding(positions)
            return encoded

        def get_config(self):
            config = super().get_config()
            config.update({"num_patches": self.num_patches, "projection_dim": self.projection_dim})
            return config
    """
)


def user_module(text: str, folder: Path, package: str):
    """The user's module: ``text`` for ``package`` written to ``folder`` and imported as their script imports it
    (its classes registered in this process). Returns (its path, the module)."""
    path = Path(folder) / f"layers_{package.lower()}.py"
    path.write_text(text.replace("{package}", package))
    spec = importlib.util.spec_from_file_location(f"user_layers_{package}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module
