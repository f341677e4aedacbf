"""Tiny graph models shared by the graph-core, fold and MC tests (tf_keras, random weights)."""

from __future__ import annotations

import functools

from tests.helpers import randomize_batchnorm


@functools.cache
def shared(name: str):
    """The model ``name(...)`` builds with its default arguments, built once per process for the tests that only
    read it (its graph, outputs, ONNX or MC export): a build is 0.05-1.5 CPU s (the recurrent one the most), and the
    graph, MC graph, fold and Keras 3 tests read the same few. A test that changes a model builds its own."""
    return globals()[name]()


def cnn(seed: int = 0, *, dropout: float = 0.3):
    """Conv2D + BN + ReLU, MaxPooling2D, a valid conv, GlobalAveragePooling2D, Dropout, Dense softmax."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same", use_bias=False),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(6, 3),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.GlobalAveragePooling2D(),
            L.Dropout(dropout),
            L.Dense(3, activation="softmax"),
        ],
        name="cnn",
    )
    randomize_batchnorm(model, seed)
    return model


def residual(seed: int = 0, *, dropout: float = 0.3):
    """A functional residual block: conv-BN-relu, conv-BN, Add with the skip, SpatialDropout2D, Dense softmax."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    inputs = keras.Input((8, 8, 2), name="pixels")
    a = L.ReLU(name="a")(L.BatchNormalization(name="bn0")(L.Conv2D(4, 3, padding="same", name="c0")(inputs)))
    b = L.BatchNormalization(name="bn1")(L.Conv2D(4, 3, padding="same", name="c1")(a))
    x = L.Activation("relu", name="r")(L.Add(name="add")([b, a]))
    x = L.SpatialDropout2D(dropout, name="sdrop")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(dropout, name="drop")(x)
    outputs = L.Dense(3, activation="softmax", name="out")(x)
    model = keras.Model(inputs, outputs, name="residual")
    randomize_batchnorm(model, seed)
    return model


def every_layer(seed: int = 0):
    """One functional model with every image layer of the support table (and the newer activations)."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = L.ZeroPadding2D(((1, 0), (0, 1)))(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, activation="gelu")(x)
    x = L.SeparableConv2D(4, 3, padding="same", activation="swish")(x)
    left = L.AveragePooling2D(padding="same")(x)
    right = L.ReLU(max_value=6.0)(L.MaxPooling2D(padding="same")(L.Conv2D(4, 1)(x)))
    x = L.Concatenate()([left, right])
    x = L.LayerNormalization()(x)
    y = L.Multiply()([x, L.Activation("sigmoid")(x)])
    x = L.SpatialDropout2D(0.2)(y)
    pooled = L.Dense(5)(L.GlobalMaxPooling2D()(y))
    x = L.Reshape((16, 8))(x)
    x = L.Cropping1D((1, 1))(L.SpatialDropout1D(0.1)(L.ZeroPadding1D((1, 2))(x)))
    x = L.Conv1D(5, 3, padding="causal", activation="elu")(x)
    x = L.MaxPooling1D()(x)
    x = L.AveragePooling1D()(x)
    g1, g2 = L.GlobalMaxPooling1D()(x), L.GlobalAveragePooling1D()(x)
    x = L.Add()([g1, g2, pooled])
    spread = L.Subtract()([L.Maximum()([g1, g2]), L.Minimum()([g1, pooled])])
    x = L.Average()([x, spread])
    x = L.Dropout(0.2)(x)
    outputs = L.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="every_layer")
    randomize_batchnorm(model, seed)
    return model


def upsampling(seed: int = 0):
    """An image-out decoder: Conv2D, MaxPooling2D, Conv2DTranspose + BN + ReLU, a sigmoid Conv2D ([N, 8, 8, 1])."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same", activation="relu"),
            L.MaxPooling2D(padding="same"),
            L.Conv2DTranspose(6, 3, strides=2, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.Conv2D(1, 3, padding="same", activation="sigmoid"),
        ],
        name="upsampling",
    )
    randomize_batchnorm(model, seed)
    return model


def embedding(seed: int = 0):
    """Token ids -> Embedding -> GlobalAveragePooling1D -> Dropout -> Dense softmax."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Embedding(20, 4),
            L.GlobalAveragePooling1D(),
            L.Dropout(0.2),
            L.Dense(3, activation="softmax"),
        ],
        name="embedding",
    )


def recurrent(seed: int = 0):
    """Token ids -> Embedding -> LSTM, GRU, Bidirectional(LSTM) (sequences) -> SimpleRNN -> Dropout -> Dense."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Embedding(20, 4),
            L.LSTM(5, return_sequences=True),
            L.GRU(4, return_sequences=True),
            L.Bidirectional(L.LSTM(3, return_sequences=True)),
            L.SimpleRNN(3),
            L.Dropout(0.2),
            L.Dense(3, activation="softmax"),
        ],
        name="recurrent",
    )


def attention_pooling(seed: int = 0):
    """keras.io's CCT SequencePooling as deploykit reads it (deploykit.keras3.ops): one score per step, a softmax
    over the steps, Permute, and a Dot of the weights with the sequence; then Dropout, an L2 UnitNormalization (an
    embedding's unit vector) and a Dense softmax."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    inputs = keras.Input((6, 4))
    x = L.Dense(5, activation="relu")(inputs)
    weights = L.Permute((2, 1))(L.Softmax(axis=1)(L.Dense(1)(x)))
    pooled = L.Reshape((5,))(L.Dot(axes=[2, 1])([weights, x]))
    outputs = L.Dense(3, activation="softmax")(L.UnitNormalization()(L.Dropout(0.2)(pooled)))
    return keras.Model(inputs, outputs, name="attention_pooling")


def attention(seed: int = 0):
    """keras.io's timeseries transformer block, tiny: self-attention (called on the input twice, as
    ``MultiHeadAttention(...)(x, x)``), Dropout, LayerNormalization, a residual Add, a Conv1D feed-forward,
    GlobalAveragePooling1D and a Dense softmax."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    inputs = keras.Input((6, 3))
    x = L.MultiHeadAttention(key_dim=4, num_heads=2, dropout=0.1)(inputs, inputs)
    x = L.LayerNormalization(epsilon=1e-6)(L.Dropout(0.1)(x))
    res = L.Add()([x, inputs])
    x = L.Conv1D(3, 1)(L.Conv1D(4, 1, activation="relu")(res))
    x = L.Add()([L.LayerNormalization(epsilon=1e-6)(x), res])
    outputs = L.Dense(3, activation="softmax")(L.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, outputs, name="attention")
