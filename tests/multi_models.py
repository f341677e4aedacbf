"""Models with several inputs or outputs, built as their authors publish them, and data named after their tensors.

``wide_and_deep``: the book's chapter 10 Wide & Deep network, line for line (a wide input of 5 features, a deep
input of 6, each standardized by a Normalization adapted on the training data, the deep path through two Dense
30 ReLU, concatenated with the wide path, one Dense(1) output; with ``aux=True`` the auxiliary output
``Dense(1)(hidden2)`` of the same section). The book trains on California housing, which needs a download: the
data here is scikit-learn's embedded diabetes set (10 features; wide = features 0-4, deep = features 2-7, as the
book splits its 8). ``three_heads``: a regressor with three named outputs. ``ticket_model``: the Keras Functional
API guide's ticket classifier (title and body word ids, 12 tags in, priority and department out, given as a dict).
``lstm_seq2seq``: keras.io's character-level sequence-to-sequence example (an encoder LSTM returning its states, a
decoder LSTM starting from them) and the example's two inference models.
Keras 3 (``import keras``) or tf_keras.
"""

from __future__ import annotations

import numpy as np


def diabetes_arrays():
    """(wide [442, 5], deep [442, 6], y [442]) float32, targets scaled to about 0..3.5 as house prices in $100k."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    x = bunch.data.astype(np.float32) * 10.0  # the raw features, on a scale the Normalization layers have to fix
    y = (bunch.target / 100.0).astype(np.float32)
    return x[:, :5], x[:, 2:8], y


def _keras(tf_keras: bool):
    if tf_keras:
        from deploykit.backend import keras

        return keras
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as deploykit itself does)

    return keras


def wide_and_deep(*, aux: bool = False, tf_keras: bool = False, epochs: int = 3, seed: int = 42, dropout: float = 0.0):
    """The book's Wide & Deep network (chapter 10), trained for ``epochs`` on the diabetes arrays."""
    keras = _keras(tf_keras)
    keras.utils.set_random_seed(seed)
    x_wide, x_deep, y = diabetes_arrays()
    input_wide = keras.layers.Input(shape=[5], name="input_wide")
    input_deep = keras.layers.Input(shape=[6], name="input_deep")
    norm_layer_wide = keras.layers.Normalization()
    norm_layer_deep = keras.layers.Normalization()
    norm_wide = norm_layer_wide(input_wide)
    norm_deep = norm_layer_deep(input_deep)
    hidden1 = keras.layers.Dense(30, activation="relu")(norm_deep)
    if dropout:
        hidden1 = keras.layers.Dropout(dropout)(hidden1)
    hidden2 = keras.layers.Dense(30, activation="relu")(hidden1)
    concat = keras.layers.concatenate([norm_wide, hidden2])
    output = keras.layers.Dense(1)(concat)
    outputs = [output]
    if aux:
        aux_output = keras.layers.Dense(1)(hidden2)
        outputs.append(aux_output)
    model = keras.Model(inputs=[input_wide, input_deep], outputs=outputs)
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    model.compile(loss=["mse"] * len(outputs), loss_weights=[0.9, 0.1] if aux else None, optimizer=optimizer)
    norm_layer_wide.adapt(x_wide)
    norm_layer_deep.adapt(x_deep)
    model.fit((x_wide, x_deep), tuple([y] * len(outputs)) if aux else y, epochs=epochs, verbose=0)
    return model


def wide_and_deep_npz(path, model) -> None:
    """The diabetes arrays named after the model's inputs; ``y`` for every output (as the book trains its aux head)."""
    x_wide, x_deep, y = diabetes_arrays()
    names = [t._keras_history[0].name for t in model.inputs]
    np.savez(path, **{names[0]: x_wide, names[1]: x_deep}, y=y)


def three_heads_arrays(n: int = 300, seed: int = 0):
    """(x [n, 8], {head: [n, width]}) targets of three heads a small net can fit."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    w = rng.normal(size=(8, 4))
    base = x @ w
    heads = {
        "price": 3.0 + base[:, :1],
        "rooms": 5.0 + 0.5 * base[:, 1:3] + 0.3 * x[:, :1] ** 2,
        "age": 30.0 + 10.0 * np.tanh(base[:, 3:4]),
    }
    noise = {k: rng.normal(scale=0.05 * np.std(v), size=v.shape) for k, v in heads.items()}
    return x, {k: (v + noise[k]).astype(np.float32) for k, v in heads.items()}


def three_heads(*, tf_keras: bool = False, epochs: int = 3, seed: int = 0, dropout: float = 0.0):
    """A regressor with three named heads: ``price`` [1], ``rooms`` [2], ``age`` [1]."""
    keras = _keras(tf_keras)
    keras.utils.set_random_seed(seed)
    x, heads = three_heads_arrays(seed=seed)
    inputs = keras.Input(shape=(8,), name="features")
    norm = keras.layers.Normalization()
    hidden = keras.layers.Dense(32, activation="relu")(norm(inputs))
    if dropout:
        hidden = keras.layers.Dropout(dropout)(hidden)
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    outputs = {name: keras.layers.Dense(v.shape[1], name=name)(hidden) for name, v in heads.items()}
    model = keras.Model(inputs, [outputs["price"], outputs["rooms"], outputs["age"]])
    model.compile(loss="mse", optimizer="adam")
    norm.adapt(x)
    model.fit(x, [heads["price"], heads["rooms"], heads["age"]], epochs=epochs, verbose=0)
    return model


def three_heads_npz(path, model) -> None:
    x, heads = three_heads_arrays()
    np.savez(path, **{model.inputs[0]._keras_history[0].name: x}, **heads)


TICKET_WORDS, TICKET_TAGS, TICKET_DEPARTMENTS = 10000, 12, 4


def ticket_model(rows: int = 256, seed: int = 0):
    """The Functional API guide's "models with multiple inputs and outputs", line for line (Keras 3): title and body
    word ids of any length (Embedding of 10,000 words, LSTM 128 and 32), 12 binary tags, concatenated; outputs
    ``priority`` (Dense 1) and ``department`` (Dense 4) given as a dict. Trained one epoch on the guide's random
    dummy data (``rows`` tickets, 10 title and 100 body words); returns (model, arrays named after its tensors)."""
    keras = _keras(False)
    layers = keras.layers
    keras.utils.set_random_seed(seed)
    title_input = keras.Input(shape=(None,), name="title")
    body_input = keras.Input(shape=(None,), name="body")
    tags_input = keras.Input(shape=(TICKET_TAGS,), name="tags")
    title_features = layers.Embedding(TICKET_WORDS, 64)(title_input)
    body_features = layers.Embedding(TICKET_WORDS, 64)(body_input)
    title_features = layers.LSTM(128)(title_features)
    body_features = layers.LSTM(32)(body_features)
    x = layers.concatenate([title_features, body_features, tags_input])
    priority_pred = layers.Dense(1, name="priority")(x)
    department_pred = layers.Dense(TICKET_DEPARTMENTS, name="department")(x)
    model = keras.Model(
        inputs=[title_input, body_input, tags_input],
        outputs={"priority": priority_pred, "department": department_pred},
    )
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-3),
        loss={
            "priority": keras.losses.BinaryCrossentropy(from_logits=True),
            "department": keras.losses.CategoricalCrossentropy(from_logits=True),
        },
        loss_weights={"priority": 1.0, "department": 0.2},
    )
    rng = np.random.default_rng(seed)
    arrays = {
        "title": rng.integers(TICKET_WORDS, size=(rows, 10)),
        "body": rng.integers(TICKET_WORDS, size=(rows, 100)),
        "tags": rng.integers(2, size=(rows, TICKET_TAGS)).astype("float32"),
        "priority": rng.random(size=(rows, 1)).astype("float32"),
        "department": rng.integers(2, size=(rows, TICKET_DEPARTMENTS)).astype("float32"),
    }
    inputs = {k: arrays[k] for k in ("title", "body", "tags")}
    model.fit(inputs, {k: arrays[k] for k in ("priority", "department")}, epochs=1, batch_size=32, verbose=0)
    return model, arrays


def noisy_digits(n: int = 400, seed: int = 0):
    """(noisy [n, 8, 8, 1], clean [n, 8, 8, 1]) float32 in [0, 1]: scikit-learn's 8x8 digits with the keras.io
    denoising tutorial's noise (factor 0.4, clipped), the 28x28 MNIST it downloads being out of reach."""
    from sklearn.datasets import load_digits

    clean = (load_digits().images[:n] / 16.0).astype(np.float32)[..., None]
    rng = np.random.default_rng(seed)
    noisy = np.clip(clean + 0.4 * rng.normal(size=clean.shape), 0.0, 1.0).astype(np.float32)
    return noisy, clean


def denoising_autoencoder(*, epochs: int = 2, seed: int = 0, batchnorm: bool = False, dropout: float = 0.0):
    """keras.io's convolutional autoencoder for image denoising, line for line on 8x8 inputs (Keras 3): an image
    output [N, 8, 8, 1]. ``batchnorm``: a BatchNormalization after each Conv2DTranspose (a common variant);
    ``dropout``: a Dropout between the encoder and the decoder (for MC Dropout)."""
    import keras
    from keras import layers

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as deploykit itself does)

    keras.utils.set_random_seed(seed)
    noisy, clean = noisy_digits()
    input = layers.Input(shape=(8, 8, 1))
    # Encoder
    x = layers.Conv2D(32, (3, 3), activation="relu", padding="same")(input)
    x = layers.MaxPooling2D((2, 2), padding="same")(x)
    x = layers.Conv2D(32, (3, 3), activation="relu", padding="same")(x)
    x = layers.MaxPooling2D((2, 2), padding="same")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    # Decoder
    for _ in range(2):
        x = layers.Conv2DTranspose(32, (3, 3), strides=2, activation=None if batchnorm else "relu", padding="same")(x)
        if batchnorm:
            x = layers.Activation("relu")(layers.BatchNormalization()(x))
    x = layers.Conv2D(1, (3, 3), activation="sigmoid", padding="same")(x)
    # Autoencoder
    autoencoder = keras.Model(input, x)
    autoencoder.compile(optimizer="adam", loss="binary_crossentropy")
    autoencoder.fit(noisy, clean, epochs=epochs, batch_size=128, shuffle=True, verbose=0)
    return autoencoder


def denoising_npz(path) -> None:
    """The noisy digits as ``x`` and the clean ones as ``y``, both [N, 8, 8, 1], as the tutorial trains on them."""
    noisy, clean = noisy_digits()
    np.savez(path, x=noisy, y=clean)


def segmentation_unet(size: int = 16, classes: int = 3, *, epochs: int = 1, seed: int = 0):
    """keras.io's "Image segmentation with a U-Net-like architecture" (``get_model``, line for line, Keras 3): a
    softmax over ``classes`` per pixel, trained with sparse_categorical_crossentropy on masks of class ids. The
    data: scikit-learn's digits scaled to ``size`` x ``size`` x 3 with a trimap-like mask (stroke, its border,
    background). Returns (model, x [N, size, size, 3], mask [N, size, size] of ids)."""
    keras = _keras(False)
    layers = keras.layers
    x, mask = digit_masks(size)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(size, size, 3))
    h = layers.Conv2D(32, 3, strides=2, padding="same")(inputs)
    h = layers.BatchNormalization()(h)
    h = layers.Activation("relu")(h)
    previous_block_activation = h
    for filters in [64, 128, 256]:
        h = layers.Activation("relu")(h)
        h = layers.SeparableConv2D(filters, 3, padding="same")(h)
        h = layers.BatchNormalization()(h)
        h = layers.Activation("relu")(h)
        h = layers.SeparableConv2D(filters, 3, padding="same")(h)
        h = layers.BatchNormalization()(h)
        h = layers.MaxPooling2D(3, strides=2, padding="same")(h)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous_block_activation)
        h = layers.add([h, residual])
        previous_block_activation = h
    for filters in [256, 128, 64, 32]:
        h = layers.Activation("relu")(h)
        h = layers.Conv2DTranspose(filters, 3, padding="same")(h)
        h = layers.BatchNormalization()(h)
        h = layers.Activation("relu")(h)
        h = layers.Conv2DTranspose(filters, 3, padding="same")(h)
        h = layers.BatchNormalization()(h)
        h = layers.UpSampling2D(2)(h)
        residual = layers.UpSampling2D(2)(previous_block_activation)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        h = layers.add([h, residual])
        previous_block_activation = h
    outputs = layers.Conv2D(classes, 3, activation="softmax", padding="same")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, mask, epochs=epochs, batch_size=32, verbose=0)
    return model, x, mask


def digit_masks(size: int = 16):
    """(x [1797, size, size, 3] float32 in [0, 1], mask [1797, size, size] uint8): digits upscaled, a 3-class mask."""
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0
    factor = size // 8
    big = np.kron(images, np.ones((factor, factor)))
    x = np.repeat(big[..., None], 3, axis=-1).astype(np.float32)
    mask = np.where(big > 0.6, 1, np.where(big > 0.1, 2, 0)).astype(np.uint8)
    return x, mask


#: keras.io's lstm_seq2seq at a test's size: characters of the source and target vocabularies, the LSTMs' units.
SEQ2SEQ_TOKENS, SEQ2SEQ_TARGET_TOKENS, SEQ2SEQ_UNITS, SEQ2SEQ_STEPS = 6, 8, 16, 5


def lstm_seq2seq(*, tf_keras: bool = False, rows: int = 240, epochs: int = 2, seed: int = 0):
    """keras.io/examples/nlp/lstm_seq2seq, line for line: the training model (one-hot source and target-so-far
    characters in, a softmax per target step out; the decoder LSTM's ``initial_state`` is the encoder's
    ``return_state`` outputs), then the example's inference models, built from the same layers: the encoder
    (source in, its states h and c out) and the decoder (a step's characters and the states in; the softmax and
    the new states out). Trained on spelling the source reversed. Returns (training, encoder, decoder, arrays:
    ``source``, ``target_in`` one-hot inputs and ``target_out`` one-hot targets [rows, steps + 1, tokens])."""
    keras = _keras(tf_keras)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    source_ids = rng.integers(0, SEQ2SEQ_TOKENS, (rows, SEQ2SEQ_STEPS))
    target_ids = source_ids[:, ::-1] + 2  # 0: start, 1: end
    ones = np.ones((rows, 1), int)
    arrays = {
        "source": np.eye(SEQ2SEQ_TOKENS, dtype="float32")[source_ids],
        "target_in": np.eye(SEQ2SEQ_TARGET_TOKENS, dtype="float32")[np.concatenate([0 * ones, target_ids], 1)],
        "target_out": np.eye(SEQ2SEQ_TARGET_TOKENS, dtype="float32")[np.concatenate([target_ids, ones], 1)],
    }
    latent_dim = SEQ2SEQ_UNITS
    encoder_inputs = keras.Input(shape=(None, SEQ2SEQ_TOKENS))
    encoder = keras.layers.LSTM(latent_dim, return_state=True)
    encoder_outputs, state_h, state_c = encoder(encoder_inputs)
    encoder_states = [state_h, state_c]
    decoder_inputs = keras.Input(shape=(None, SEQ2SEQ_TARGET_TOKENS))
    decoder_lstm = keras.layers.LSTM(latent_dim, return_sequences=True, return_state=True)
    decoder_outputs, _, _ = decoder_lstm(decoder_inputs, initial_state=encoder_states)
    decoder_dense = keras.layers.Dense(SEQ2SEQ_TARGET_TOKENS, activation="softmax")
    decoder_outputs = decoder_dense(decoder_outputs)
    model = keras.Model([encoder_inputs, decoder_inputs], decoder_outputs)
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit([arrays["source"], arrays["target_in"]], arrays["target_out"], batch_size=64, epochs=epochs, verbose=0)
    encoder_model = keras.Model(encoder_inputs, encoder_states)
    decoder_state_input_h = keras.Input(shape=(latent_dim,))
    decoder_state_input_c = keras.Input(shape=(latent_dim,))
    decoder_states_inputs = [decoder_state_input_h, decoder_state_input_c]
    decoder_outputs, state_h, state_c = decoder_lstm(decoder_inputs, initial_state=decoder_states_inputs)
    decoder_states = [state_h, state_c]
    decoder_outputs = decoder_dense(decoder_outputs)
    decoder_model = keras.Model([decoder_inputs] + decoder_states_inputs, [decoder_outputs] + decoder_states)
    return model, encoder_model, decoder_model, arrays


def tensor_names(tensors) -> list[str]:
    """deploykit's names of a Keras model's tensors: the layer's name, ``:i`` after it for its output i > 0."""
    from deploykit.core.graph import tensor_name

    histories = [t._keras_history for t in tensors]
    return [tensor_name(h[0].name, h[2]) for h in histories]
