"""The newcomer's models (issue 20) as ONE table: Keras 3 files built as their authors publish them.

Each model is built and trained in a plain Keras 3 process (no deploykit, no tf_keras), saved with
``model.save("x.keras")``, then ``deploykit optimize MODEL --data DATA`` runs with defaults (the big
keras.applications networks with ``--time-budget``) in its own process. Per model, side by side in one table:

- the exit code and the wall / CPU seconds;
- the shipped artifacts, and whether each one is within the accuracy budget by the rule the tests hold
  (``tests.helpers.ships_by_budget``: validation accepts, the test split confirms);
- every rejected artifact with the reason ``report.json`` gives (a rejected artifact, never a failed run);
- in a fresh plain Keras 3 process: ``model.keras`` reopened with ``keras.saving.load_model`` and its outputs
  against the user's own model on 256 rows (max |difference|, divided by the outputs' RMS above 1; target
  <= 1e-5 where nothing was pruned), with a kept temperature applied to the user's outputs (``model.keras`` holds
  it folded into its head) and the chapter's ``MCDropout`` read in inference mode.

Models: ``mnist_convnet`` (keras.io "Simple MNIST convnet", line for line: one-hot labels,
categorical_crossentropy), ``tabular`` (a tutorial tabular classifier: Normalization, Dense ReLU, Dense softmax on
scikit-learn's 64-feature digits table), ``quickstart`` (TensorFlow 2 quickstart for beginners: Dense(10) logits,
``from_logits=True``), ``gru`` (Embedding, GRU, Dropout, softmax on token sequences), ``mobilenet_v3_small``,
``convnext_tiny``, ``efficientnet_b0`` (``keras.applications`` with ``weights=None``, 32x32x3 inputs with their
own preprocessing, 10 classes, on the Fashion sample padded to 32x32 and repeated over 3 channels); and from
``bench_models.py``: ``sigmoid``, ``onehot``, ``lstm``, ``three_heads``, ``wide_deep``, ``mc_dropout``. The second
round (:data:`TUTORIALS`), each as its tutorial builds it: ``image_tutorial`` (tensorflow.org image classification,
its ``data_augmentation`` Sequential inside the model), ``transfer`` (keras.io transfer learning: augmentation and a
MobileNetV2 base called with ``training=False``), ``text_cnn`` (keras.io text classification from scratch: any
length of token ids, sigmoid head), ``bilstm`` (keras.io bidirectional LSTM), ``ts_transformer`` (keras.io
timeseries transformer: MultiHeadAttention, the Fashion images as 28 steps of 28 features), ``autoencoder``
(keras.io convolutional autoencoder: Conv2DTranspose, an image out), ``xception_small`` (keras.io image
classification from scratch: augmentation, SeparableConv2D residual blocks, one logit for footwear or not). The
third round (:data:`THIRD`): ``anomaly_ae`` (keras.io timeseries anomaly detection: Conv1D / Conv1DTranspose, each
image one series of 784 values), ``lstm_ae`` (an LSTM autoencoder: RepeatVector, TimeDistributed(Dense)),
``forecast`` (keras.io weather forecasting's LSTM -> Dense(1), on a whole-number target), ``docs_attention`` (the
Keras docs' Attention example: a shared Embedding and Conv1D over query and value token ids of any length),
``ops_pooling`` (``keras.ops.mean`` / ``max`` / ``concatenate`` between layers) and ``structured`` (numeric
columns normalized beside an integer category code embedded: two inputs). The fourth round (:data:`FOURTH`):
``multi_label`` (keras.io multi-label classification's MLP: three sigmoid units on a 0/1 label matrix),
``ticket`` (the Keras Functional API guide's ticket model: three inputs, a dict of two outputs, its own dummy
data), ``unet`` (keras.io's U-Net segmentation: a softmax per pixel, masks of class ids), ``tagger`` (a BiLSTM
tagger: a softmax per step) and ``text_20k`` (keras.io text classification from scratch at its 20,000 words). The
fifth (:data:`FIFTH`): ``lstm_seq2seq`` (keras.io's character-level sequence to sequence, line for line: the
encoder LSTM returns its states and the decoder LSTM starts from them; here it reads an image's 28 rows and spells
its class name, teacher-forced as the example trains it). The sixth (:data:`SIXTH`), custom classes given to
``optimize`` with ``--custom-objects`` (:data:`CUSTOM_LAYERS`, the user's module): ``transformer_text`` (keras.io
text classification with Transformer: its ``TokenAndPositionEmbedding`` and ``TransformerBlock``, with the saving
guide's ``get_config``), ``subclassed_mlp`` (the Keras subclassing guide's ``Linear`` layer and ``MLPBlock`` model,
logits out) and ``vit`` (keras.io's Vision Transformer, its ``Patches`` and ``PatchEncoder``, 7x7 patches, two
blocks, logits out). The seventh (:data:`SEVENTH`), tf.keras (Keras 2) files trained in a process where
``tf.keras`` is tf_keras (``TF_USE_LEGACY_KERAS=1``, as TensorFlow <= 2.15 runs) and checked in one: ``tf_transfer``
(tensorflow.org's transfer-learning tutorial, line for line: ``mobilenet_v2.preprocess_input``, two TensorFlow
calls in the file, and a frozen MobileNetV2 base called with ``training=False``, trained on the task first in place
of ImageNet's weights; one logit for footwear or not),
``tf_mobilenet_v3`` (tf.keras's ``MobileNetV3Small``, whose hard-swish is TensorFlow arithmetic) and ``tf_ops_seq``
(an LSTM's last step beside its mean over steps, ``tf.concat`` / ``x[:, -1]`` / ``tf.reduce_mean`` / ``tf.nn.relu``
between layers) and ``tf_segmentation`` (tensorflow.org's segmentation tutorial: a MobileNetV2 sub-model of five
outputs, pix2pix's ``upsample`` blocks with ``tf.random_normal_initializer``, one logit per class per pixel).

Writes ``benchmarks/results/foreign.json`` and ``foreign.md`` (a run of some models keeps the others' rows).
Run from the repository root:

    python benchmarks/bench_foreign.py [--models mnist_convnet,gru] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import bench_models as bm
from common import FASHION, RESULTS, ROOT, last_rows, write_results  # noqa: E402  (puts the repository on sys.path)

from tests.custom_models import GUIDE_PY, TRANSFORMER_PY, VIT_PY  # noqa: E402  (the user's module, as published)

#: Built here (the others by bench_models.py's own training script).
OWN = ("mnist_convnet", "tabular", "quickstart", "gru", "mobilenet_v3_small", "convnext_tiny", "efficientnet_b0")
#: The second round of models users bring (nested augmentation, a transfer-learning base, any-length text, an
#: image out, attention, a binary logit head), each as its tutorial publishes it.
TUTORIALS = ("image_tutorial", "transfer", "text_cnn", "bilstm", "ts_transformer", "autoencoder", "xception_small")
#: The third round: a Conv1DTranspose anomaly detector, an LSTM autoencoder, a one-unit forecaster on whole-number
#: targets, the Keras docs' Attention example (shared layers, two inputs), keras.ops between layers, and an integer
#: category embedded beside numeric columns.
THIRD = ("anomaly_ae", "lstm_ae", "forecast", "docs_attention", "ops_pooling", "structured")
#: The fourth round: heads that are not one classifier (a multi-label sigmoid head, a softmax per pixel and per
#: step), a dict of outputs, and an embedding of 10,000 and 20,000 words in float16.
FOURTH = ("multi_label", "ticket", "unet", "tagger", "text_20k")
#: The fifth round: an encoder-decoder whose decoder starts from the encoder's returned states.
FIFTH = ("lstm_seq2seq",)
#: The sixth round: custom layer classes and a subclassed model, their code given as the user's module.
SIXTH = ("transformer_text", "subclassed_mlp", "vit")
#: The seventh round: tf.keras (Keras 2) files, trained where ``tf.keras`` is tf_keras (TensorFlow <= 2.15), with
#: TensorFlow calls between their layers (``TFOpLambda`` layers in the file).
SEVENTH = ("tf_transfer", "tf_mobilenet_v3", "tf_ops_seq", "tf_segmentation")
OWN = OWN + TUTORIALS + THIRD + FOURTH + FIFTH + SIXTH + SEVENTH
#: lstm_seq2seq spells the Fashion class names (keras.io's example: characters one-hot, "\t" starts, "\n" ends).
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FROM_BENCH_MODELS = ("sigmoid", "onehot", "lstm", "three_heads", "wide_deep", "mc_dropout")
MODELS = OWN + FROM_BENCH_MODELS
APPLICATIONS = {
    "mobilenet_v3_small": "MobileNetV3Small",
    "convnext_tiny": "ConvNeXtTiny",
    "efficientnet_b0": "EfficientNetB0",
}
#: What a user with a big network on a laptop passes: the run plans its tries to finish in this many minutes.
EXTRA = {
    name: ("--time-budget", "10")
    for name in (*APPLICATIONS, "transfer", "ts_transformer", "xception_small")
    + ("tf_transfer", "tf_mobilenet_v3", "tf_segmentation")
}
#: Training epochs at most (the big networks train slowly on 2 shared cores: they need to run, not to excel).
EPOCHS = {
    "lstm_seq2seq": 30,  # results/: run with --epochs 30 (keras.io trains 100; at 5 its character accuracy was 0.81)
    "ticket": 2,
    "unet": 3,
    "text_20k": 3,
    "convnext_tiny": 2,
    "efficientnet_b0": 5,
    "mobilenet_v3_small": 3,
    "transfer": 3,
    "ts_transformer": 3,
    "xception_small": 3,
    "tf_transfer": 3,
    "tf_mobilenet_v3": 3,
    "tf_segmentation": 3,
}
#: keras.applications networks: (training rows at most, batch size). Their last HELD_OUT rows are never trained on;
#: the training process reports the model's accuracy on them (it must be above chance: 10 classes, 0.1).
APPLICATION_TRAINING = {
    "mobilenet_v3_small": (3000, 32),
    "efficientnet_b0": (3000, 32),
    "convnext_tiny": (1500, 32),
    "tf_mobilenet_v3": (3000, 32),
}
HELD_OUT = 600
TARGET = 1e-5

#: The user's module of custom classes (keras.io's Transformer text classifier; the Keras subclassing guide), as
#: their training script imports it: the training and checking processes run it, optimize gets it as a file.
CUSTOM_LAYERS = "".join(text.replace("{package}", "Custom") for text in (TRANSFORMER_PY, GUIDE_PY, VIT_PY))

#: Built and trained in a plain Keras 3 process: argv = kind, data (.npz), epochs, out path (keras.applications:

#: How both training scripts fit a keras.applications network (the framework's ``keras`` and the arrays in scope):
#: BatchNormalization momentum 0.9 (a training setting, inference ignores it: statistics that settle in 100s of
#: steps), at most the rows and batch argv gives, and the accuracy on the held-out rows printed as JSON.
FIT_APPLICATION = """\
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.momentum = min(layer.momentum, 0.9)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rows, batch, held = (int(a) for a in sys.argv[5:8])
    model.fit(x[:-held][:rows], y[:-held][:rows], epochs=epochs, batch_size=batch, verbose=0)
    accuracy = float(model.evaluate(x[-held:], y[-held:], batch_size=256, verbose=0)[1])
    print(json.dumps({"held_out_accuracy": accuracy, "held_out_rows": held, "train_rows": len(x[:-held][:rows]),
                      "batch_size": batch}))
"""

#: then training rows, batch size, held-out rows; it prints their accuracy as JSON).
TRAIN = textwrap.dedent("""
    import json, sys, numpy as np, keras
    kind, data, epochs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    keras.utils.set_random_seed(0)
    z = np.load(data)
    x, y = (z["x"] if "x" in z else None), (z["y"] if "y" in z else None)
    L = keras.layers
    if kind == "mnist_convnet":  # keras.io/examples/vision/mnist_convnet, as published
        model = keras.Sequential([keras.Input(shape=(28, 28, 1)),
            L.Conv2D(32, kernel_size=(3, 3), activation="relu"), L.MaxPooling2D(pool_size=(2, 2)),
            L.Conv2D(64, kernel_size=(3, 3), activation="relu"), L.MaxPooling2D(pool_size=(2, 2)),
            L.Flatten(), L.Dropout(0.5), L.Dense(10, activation="softmax")])
        model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        model.fit(x, y, batch_size=128, epochs=epochs, validation_split=0.1, verbose=0)
    elif kind == "tabular":  # Normalization adapted on the table, one hidden layer, softmax
        norm = L.Normalization()
        norm.adapt(x)
        model = keras.Sequential([keras.Input(shape=x.shape[1:]), norm, L.Dense(64, activation="relu"),
                                  L.Dropout(0.2), L.Dense(int(y.max()) + 1, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, validation_split=0.15, verbose=0)
    elif kind == "quickstart":  # tensorflow.org/tutorials/quickstart/beginner, as published
        model = keras.models.Sequential([keras.layers.Input((28, 28)), keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(0.2), keras.layers.Dense(10)])
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer="adam", loss=loss_fn, metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, verbose=0)
    elif kind == "gru":
        model = keras.Sequential([keras.Input(x.shape[1:], dtype="int32"), L.Embedding(int(x.max()) + 1, 16),
                                  L.GRU(32), L.Dropout(0.2), L.Dense(int(y.max()) + 1, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x.astype("int32"), y, epochs=epochs, batch_size=32, validation_split=0.15, verbose=0)
    elif kind == "image_tutorial":  # tensorflow.org/tutorials/images/classification, augmentation in the model
        data_augmentation = keras.Sequential([L.RandomFlip("horizontal", input_shape=x.shape[1:]),
                                              L.RandomRotation(0.1), L.RandomZoom(0.1)])
        model = keras.Sequential([data_augmentation, L.Rescaling(1. / 255),
            L.Conv2D(16, 3, padding="same", activation="relu"), L.MaxPooling2D(),
            L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
            L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPooling2D(),
            L.Dropout(0.2), L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10, name="outputs")])
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x, y, validation_split=0.15, epochs=epochs, verbose=0)
    elif kind == "transfer":  # keras.io/guides/transfer_learning: augmentation, a keras.applications base called
        # with training=False (weights=None: no download, so the base is fine-tuned, the guide's second stage)
        augmentation = keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.1)])
        base_model = keras.applications.MobileNetV2(weights=None, input_shape=x.shape[1:], include_top=False,
                                                    alpha=0.35)
        inputs = keras.Input(shape=x.shape[1:])
        h = L.Rescaling(scale=1 / 127.5, offset=-1)(augmentation(inputs))
        h = base_model(h, training=False)
        h = L.Dropout(0.2)(L.GlobalAveragePooling2D()(h))
        model = keras.Model(inputs, L.Dense(10)(h))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.15, verbose=0)
    elif kind == "text_cnn":  # keras.io/examples/nlp/text_classification_from_scratch (vectorized outside)
        inputs = keras.Input(shape=(None,), dtype="int64")
        h = L.Dropout(0.5)(L.Embedding(int(x.max()) + 1, 64)(inputs))
        h = L.Conv1D(64, 7, padding="valid", activation="relu", strides=3)(h)
        h = L.Conv1D(64, 7, padding="valid", activation="relu", strides=3)(h)
        h = L.Dropout(0.5)(L.Dense(64, activation="relu")(L.GlobalMaxPooling1D()(h)))
        model = keras.Model(inputs, L.Dense(1, activation="sigmoid", name="predictions")(h))
        model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
        model.fit(x.astype("int64"), y, validation_split=0.15, epochs=epochs, verbose=0)
    elif kind == "bilstm":  # keras.io/examples/nlp/bidirectional_lstm_imdb
        inputs = keras.Input(shape=(None,), dtype="int32")
        h = L.Embedding(int(x.max()) + 1, 32)(inputs)
        h = L.Bidirectional(L.LSTM(32, return_sequences=True))(h)
        h = L.Bidirectional(L.LSTM(32))(h)
        model = keras.Model(inputs, L.Dense(1, activation="sigmoid")(h))
        model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
        model.fit(x.astype("int32"), y, batch_size=32, epochs=epochs, validation_split=0.15, verbose=0)
    elif kind == "ts_transformer":  # keras.io/examples/timeseries/timeseries_classification_transformer
        def transformer_encoder(inputs, head_size, num_heads, ff_dim, dropout=0):
            h = L.MultiHeadAttention(key_dim=head_size, num_heads=num_heads, dropout=dropout)(inputs, inputs)
            h = L.LayerNormalization(epsilon=1e-6)(L.Dropout(dropout)(h))
            res = h + inputs
            h = L.Conv1D(filters=ff_dim, kernel_size=1, activation="relu")(res)
            h = L.Conv1D(filters=inputs.shape[-1], kernel_size=1)(L.Dropout(dropout)(h))
            return L.LayerNormalization(epsilon=1e-6)(h) + res
        inputs = keras.Input(shape=x.shape[1:])
        h = inputs
        for _ in range(4):
            h = transformer_encoder(h, 256, 4, 4, 0.25)
        h = L.GlobalAveragePooling1D(data_format="channels_last")(h)
        h = L.Dropout(0.4)(L.Dense(128, activation="relu")(h))
        model = keras.Model(inputs, L.Dense(10, activation="softmax")(h))
        model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.Adam(learning_rate=1e-4),
                      metrics=["sparse_categorical_accuracy"])
        model.fit(x, y, validation_split=0.2, epochs=epochs, batch_size=64, verbose=0)
    elif kind == "autoencoder":  # keras.io/examples/vision/autoencoder (the denoising one's model, clean images)
        inputs = keras.Input(shape=x.shape[1:])
        h = L.Conv2D(32, (3, 3), activation="relu", padding="same")(inputs)
        h = L.MaxPooling2D((2, 2), padding="same")(h)
        h = L.Conv2D(32, (3, 3), activation="relu", padding="same")(h)
        h = L.MaxPooling2D((2, 2), padding="same")(h)
        h = L.Conv2DTranspose(32, (3, 3), strides=2, activation="relu", padding="same")(h)
        h = L.Conv2DTranspose(32, (3, 3), strides=2, activation="relu", padding="same")(h)
        model = keras.Model(inputs, L.Conv2D(1, (3, 3), activation="sigmoid", padding="same")(h))
        model.compile(optimizer="adam", loss="binary_crossentropy")
        model.fit(x, y, epochs=epochs, batch_size=128, shuffle=True, verbose=0)
    elif kind == "xception_small":  # keras.io/examples/vision/image_classification_from_scratch (make_model)
        augmentation_layers = [L.RandomFlip("horizontal"), L.RandomRotation(0.1)]
        inputs = keras.Input(shape=x.shape[1:])
        h = inputs
        for layer in augmentation_layers:
            h = layer(h)
        h = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(128, 3, strides=2, padding="same")(
            L.Rescaling(1.0 / 255)(h))))
        previous = h
        for size in [256, 512, 728]:
            h = L.SeparableConv2D(size, 3, padding="same")(L.Activation("relu")(h))
            h = L.SeparableConv2D(size, 3, padding="same")(L.Activation("relu")(L.BatchNormalization()(h)))
            h = L.MaxPooling2D(3, strides=2, padding="same")(L.BatchNormalization()(h))
            h = L.add([h, L.Conv2D(size, 1, strides=2, padding="same")(previous)])
            previous = h
        h = L.Activation("relu")(L.BatchNormalization()(L.SeparableConv2D(1024, 3, padding="same")(h)))
        h = L.Dropout(0.25)(L.GlobalAveragePooling2D()(h))
        model = keras.Model(inputs, L.Dense(1, activation=None)(h))
        model.compile(optimizer=keras.optimizers.Adam(3e-4), metrics=[keras.metrics.BinaryAccuracy(name="acc")],
                      loss=keras.losses.BinaryCrossentropy(from_logits=True))
        model.fit(x, y, epochs=epochs, batch_size=64, validation_split=0.15, verbose=0)
    elif kind == "anomaly_ae":  # keras.io/examples/timeseries/timeseries_anomaly_detection, as published
        model = keras.Sequential([L.Input(shape=(x.shape[1], x.shape[2])),
            L.Conv1D(filters=32, kernel_size=7, padding="same", strides=2, activation="relu"), L.Dropout(rate=0.2),
            L.Conv1D(filters=16, kernel_size=7, padding="same", strides=2, activation="relu"),
            L.Conv1DTranspose(filters=16, kernel_size=7, padding="same", strides=2, activation="relu"),
            L.Dropout(rate=0.2),
            L.Conv1DTranspose(filters=32, kernel_size=7, padding="same", strides=2, activation="relu"),
            L.Conv1DTranspose(filters=1, kernel_size=7, padding="same")])
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="mse")
        model.fit(x, y, epochs=epochs, batch_size=128, validation_split=0.1, verbose=0)
    elif kind == "lstm_ae":  # an LSTM autoencoder (RepeatVector, TimeDistributed(Dense)), the usual recipe
        model = keras.Sequential([keras.Input(shape=x.shape[1:]), L.LSTM(64), L.RepeatVector(x.shape[1]),
            L.LSTM(64, return_sequences=True), L.TimeDistributed(L.Dense(x.shape[2]))])
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, epochs=epochs, batch_size=64, validation_split=0.1, verbose=0)
    elif kind == "forecast":  # keras.io/examples/timeseries/timeseries_weather_forecasting's model, as published
        inputs = keras.layers.Input(shape=(x.shape[1], x.shape[2]))
        lstm_out = keras.layers.LSTM(32)(inputs)
        model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(1)(lstm_out))
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="mse")
        model.fit(x, y, batch_size=256, epochs=epochs, validation_split=0.1, verbose=0)
    elif kind == "docs_attention":  # keras.io/api/layers/attention_layers/attention, its example, as published
        query_input = keras.Input(shape=(None,), dtype="int32", name="query")
        value_input = keras.Input(shape=(None,), dtype="int32", name="value")
        token_embedding = L.Embedding(input_dim=16, output_dim=64)
        query_embeddings = token_embedding(query_input)
        value_embeddings = token_embedding(value_input)
        cnn_layer = L.Conv1D(filters=100, kernel_size=4, padding="same")
        query_seq_encoding = cnn_layer(query_embeddings)
        value_seq_encoding = cnn_layer(value_embeddings)
        query_value_attention_seq = L.Attention()([query_seq_encoding, value_seq_encoding])
        query_encoding = L.GlobalAveragePooling1D()(query_seq_encoding)
        query_value_attention = L.GlobalAveragePooling1D()(query_value_attention_seq)
        input_layer = L.Concatenate()([query_encoding, query_value_attention])
        model = keras.Model([query_input, value_input], L.Dense(10, activation="softmax")(input_layer))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit({"query": z["query"], "value": z["value"]}, y, epochs=epochs, batch_size=64, verbose=0)
    elif kind == "ops_pooling":  # keras.ops between layers, as Keras 3 examples write them: mean and max over steps
        inputs = keras.Input(shape=x.shape[1:])
        h = L.Dense(64, activation="relu")(inputs)
        pooled = keras.ops.concatenate([keras.ops.mean(h, axis=1), keras.ops.max(h, axis=1)], axis=-1)
        h = L.Dropout(0.3)(L.Dense(64, activation="relu")(pooled))
        model = keras.Model(inputs, L.Dense(10, activation="softmax")(h))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, batch_size=64, validation_split=0.15, verbose=0)
    elif kind == "structured":  # numeric columns normalized beside an integer category code embedded (no strings)
        numeric = keras.Input(shape=z["numeric"].shape[1:], name="numeric")
        category = keras.Input(shape=(1,), dtype="int64", name="category")
        norm = L.Normalization()
        norm.adapt(z["numeric"])
        code = L.Flatten()(L.Embedding(28, 4)(category))
        h = L.Dense(64, activation="relu")(L.Concatenate()([norm(numeric), code]))
        model = keras.Model([numeric, category], L.Dense(10, activation="softmax")(L.Dropout(0.3)(h)))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit({"numeric": z["numeric"], "category": z["category"]}, y, epochs=epochs, verbose=0)
    elif kind == "multi_label":  # keras.io/examples/nlp/multi_label_classification's make_model, as published
        model = keras.Sequential([L.Dense(512, activation="relu"), L.Dense(256, activation="relu"),
                                  L.Dense(y.shape[1], activation="sigmoid")])
        model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["binary_accuracy"])
        model.fit(x, y, validation_split=0.15, epochs=epochs, verbose=0)
    elif kind == "ticket":  # keras.io/guides/functional_api, "models with multiple inputs and outputs", as published
        num_tags, num_words, num_departments = 12, 10000, 4
        title_input = keras.Input(shape=(None,), name="title")
        body_input = keras.Input(shape=(None,), name="body")
        tags_input = keras.Input(shape=(num_tags,), name="tags")
        title_features = L.LSTM(128)(L.Embedding(num_words, 64)(title_input))
        body_features = L.LSTM(32)(L.Embedding(num_words, 64)(body_input))
        h = L.concatenate([title_features, body_features, tags_input])
        priority_pred = L.Dense(1, name="priority")(h)
        department_pred = L.Dense(num_departments, name="department")(h)
        model = keras.Model(inputs=[title_input, body_input, tags_input],
                            outputs={"priority": priority_pred, "department": department_pred})
        model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                      loss={"priority": keras.losses.BinaryCrossentropy(from_logits=True),
                            "department": keras.losses.CategoricalCrossentropy(from_logits=True)},
                      loss_weights={"priority": 1.0, "department": 0.2})
        model.fit({k: z[k] for k in ("title", "body", "tags")}, {k: z[k] for k in ("priority", "department")},
                  epochs=epochs, batch_size=32, verbose=0)
    elif kind == "unet":  # keras.io/examples/vision/oxford_pets_image_segmentation's get_model, as published
        inputs = keras.Input(shape=x.shape[1:])
        h = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(32, 3, strides=2, padding="same")(inputs)))
        previous_block_activation = h
        for filters in [64, 128, 256]:
            h = L.Activation("relu")(h)
            h = L.BatchNormalization()(L.SeparableConv2D(filters, 3, padding="same")(h))
            h = L.Activation("relu")(h)
            h = L.BatchNormalization()(L.SeparableConv2D(filters, 3, padding="same")(h))
            h = L.MaxPooling2D(3, strides=2, padding="same")(h)
            residual = L.Conv2D(filters, 1, strides=2, padding="same")(previous_block_activation)
            h = previous_block_activation = L.add([h, residual])
        for filters in [256, 128, 64, 32]:
            h = L.Activation("relu")(h)
            h = L.BatchNormalization()(L.Conv2DTranspose(filters, 3, padding="same")(h))
            h = L.Activation("relu")(h)
            h = L.BatchNormalization()(L.Conv2DTranspose(filters, 3, padding="same")(h))
            h = L.UpSampling2D(2)(h)
            residual = L.Conv2D(filters, 1, padding="same")(L.UpSampling2D(2)(previous_block_activation))
            h = previous_block_activation = L.add([h, residual])
        model = keras.Model(inputs, L.Conv2D(3, 3, activation="softmax", padding="same")(h))
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.15, verbose=0)
    elif kind == "tagger":  # a BiLSTM sequence tagger: one softmax per step (each image row tagged by its ink)
        model = keras.Sequential([keras.Input(shape=x.shape[1:]),
                                  L.Bidirectional(L.LSTM(32, return_sequences=True)), L.Dropout(0.2),
                                  L.Dense(int(y.max()) + 1, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.15, verbose=0)
    elif kind == "text_20k":  # keras.io/examples/nlp/text_classification_from_scratch at its own 20,000 words
        inputs = keras.Input(shape=(None,), dtype="int64")
        h = L.Dropout(0.5)(L.Embedding(20000, 128)(inputs))
        h = L.Conv1D(128, 7, padding="valid", activation="relu", strides=3)(h)
        h = L.Conv1D(128, 7, padding="valid", activation="relu", strides=3)(h)
        h = L.Dropout(0.5)(L.Dense(128, activation="relu")(L.GlobalMaxPooling1D()(h)))
        model = keras.Model(inputs, L.Dense(1, activation="sigmoid", name="predictions")(h))
        model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
        model.fit(x, y, validation_split=0.15, epochs=epochs, verbose=0)
    elif kind == "transformer_text":  # keras.io/examples/nlp/text_classification_with_transformer, its model
        maxlen, vocab_size, embed_dim, num_heads, ff_dim = x.shape[1], 16, 32, 2, 32
        inputs = L.Input(shape=(maxlen,))
        h = TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)(inputs)
        h = TransformerBlock(embed_dim, num_heads, ff_dim)(h)
        h = L.GlobalAveragePooling1D()(h)
        h = L.Dropout(0.1)(h)
        h = L.Dense(20, activation="relu")(h)
        h = L.Dropout(0.1)(h)
        outputs = L.Dense(10, activation="softmax")(h)
        model = keras.Model(inputs=inputs, outputs=outputs)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    elif kind == "vit":  # keras.io/examples/vision/image_classification_with_vision_transformer, smaller
        image_size, patch_size, projection_dim, num_heads = 28, 7, 32, 2
        num_patches = (image_size // patch_size) ** 2
        def mlp(h, hidden_units, dropout_rate):
            for units in hidden_units:
                h = L.Dense(units, activation=keras.activations.gelu)(h)
                h = L.Dropout(dropout_rate)(h)
            return h
        inputs = keras.Input(shape=(28, 28, 1))
        encoded_patches = PatchEncoder(num_patches, projection_dim)(Patches(patch_size)(inputs))
        for _ in range(2):
            x1 = L.LayerNormalization(epsilon=1e-6)(encoded_patches)
            attention_output = L.MultiHeadAttention(num_heads=num_heads, key_dim=projection_dim, dropout=0.1)(x1, x1)
            x2 = L.Add()([attention_output, encoded_patches])
            x3 = L.LayerNormalization(epsilon=1e-6)(x2)
            x3 = mlp(x3, hidden_units=[projection_dim * 2, projection_dim], dropout_rate=0.1)
            encoded_patches = L.Add()([x3, x2])
        representation = L.LayerNormalization(epsilon=1e-6)(encoded_patches)
        representation = L.Dropout(0.5)(L.Flatten()(representation))
        features = mlp(representation, hidden_units=[64], dropout_rate=0.5)
        model = keras.Model(inputs=inputs, outputs=L.Dense(10)(features))
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=0.001, weight_decay=0.0001),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        model.fit(x, y, batch_size=64, epochs=epochs, validation_split=0.1, verbose=0)
    elif kind == "subclassed_mlp":  # keras.io/guides/making_new_layers_and_models_via_subclassing: MLPBlock
        model = MLPBlock()
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    elif kind == "lstm_seq2seq":  # keras.io/examples/nlp/lstm_seq2seq, as published (its latent_dim, its fit)
        latent_dim = 256
        num_encoder_tokens, num_decoder_tokens = z["input_layer"].shape[-1], z["input_layer_1"].shape[-1]
        encoder_inputs = keras.Input(shape=(None, num_encoder_tokens))
        encoder = keras.layers.LSTM(latent_dim, return_state=True)
        encoder_outputs, state_h, state_c = encoder(encoder_inputs)
        encoder_states = [state_h, state_c]
        decoder_inputs = keras.Input(shape=(None, num_decoder_tokens))
        decoder_lstm = keras.layers.LSTM(latent_dim, return_sequences=True, return_state=True)
        decoder_outputs, _, _ = decoder_lstm(decoder_inputs, initial_state=encoder_states)
        decoder_dense = keras.layers.Dense(num_decoder_tokens, activation="softmax")
        decoder_outputs = decoder_dense(decoder_outputs)
        model = keras.Model([encoder_inputs, decoder_inputs], decoder_outputs)
        model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
        model.fit([z["input_layer"], z["input_layer_1"]], z["dense"], batch_size=64, epochs=epochs,
                  validation_split=0.2, verbose=0)
    else:  # keras.applications, weights=None (no download), its own preprocessing of 0-255 pixels
        ctor = getattr(keras.applications, kind)
        model = ctor(weights=None, input_shape=x.shape[1:], classes=int(y.max()) + 1)
        # FIT_APPLICATION
    model.save(out)
""")

#: The seventh round's models, built as their tf.keras (Keras 2) authors wrote them and trained in a tf.keras process
#: (:func:`bench_models.legacy_keras`): argv as :data:`TRAIN`'s.
TRAIN_TF = textwrap.dedent("""
    import json, sys, numpy as np, tensorflow as tf
    keras = tf.keras  # tf_keras here: the process runs with TF_USE_LEGACY_KERAS=1, as TensorFlow <= 2.15 runs
    kind, data, epochs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    keras.utils.set_random_seed(0)
    z = np.load(data)
    x, y = z["x"], z["y"]
    L = keras.layers
    if kind == "tf_transfer":  # tensorflow.org/tutorials/images/transfer_learning, its model line for line
        data_augmentation = keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.2)])
        preprocess_input = keras.applications.mobilenet_v2.preprocess_input  # x / 127.5 - 1: two TFOpLambda
        base_model = keras.applications.MobileNetV2(input_shape=x.shape[1:], include_top=False, weights=None,
                                                    alpha=0.35)
        # weights=None (no download): the base is first trained on the same task, in place of ImageNet's weights
        # (frozen with its initial statistics and called with training=False, a random base learns nothing)
        for layer in base_model.layers:
            if isinstance(layer, L.BatchNormalization):
                layer.momentum = 0.9
        pretrained = keras.Sequential([keras.Input(x.shape[1:]), L.Rescaling(1 / 127.5, offset=-1), base_model,
                                       L.GlobalAveragePooling2D(), L.Dense(1)])
        pretrained.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
        pretrained.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.15, verbose=0)
        base_model.trainable = False
        inputs = keras.Input(shape=x.shape[1:])
        h = data_augmentation(inputs)
        h = preprocess_input(h)
        h = base_model(h, training=False)
        h = L.GlobalAveragePooling2D()(h)
        h = L.Dropout(0.2)(h)
        model = keras.Model(inputs, L.Dense(1)(h))
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                      loss=keras.losses.BinaryCrossentropy(from_logits=True),
                      metrics=[keras.metrics.BinaryAccuracy(threshold=0, name="accuracy")])
        model.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.15, verbose=0)
    elif kind == "tf_segmentation":  # tensorflow.org/tutorials/images/segmentation, its model (pix2pix's upsample)
        def upsample(filters, size):
            initializer = tf.random_normal_initializer(0., 0.02)  # TensorFlow's own initializer, saved as such
            result = keras.Sequential()
            result.add(L.Conv2DTranspose(filters, size, strides=2, padding="same", kernel_initializer=initializer,
                                         use_bias=False))
            result.add(L.BatchNormalization())
            result.add(L.ReLU())
            return result
        base_model = keras.applications.MobileNetV2(input_shape=x.shape[1:], include_top=False, weights=None,
                                                    alpha=0.35)
        layer_names = ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
                       "block_16_project"]
        # a sub-model of five outputs; weights=None (no download): it trains with the rest, not frozen
        down_stack = keras.Model(inputs=base_model.input, outputs=[base_model.get_layer(n).output for n in layer_names])
        inputs = L.Input(shape=x.shape[1:])
        skips = down_stack(inputs)
        h = skips[-1]
        for up, skip in zip([upsample(128, 3), upsample(64, 3), upsample(32, 3), upsample(16, 3)],
                            reversed(skips[:-1])):
            h = L.Concatenate()([up(h), skip])
        model = keras.Model(inputs, L.Conv2DTranspose(filters=3, kernel_size=3, strides=2, padding="same")(h))
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.15, verbose=0)
    elif kind == "tf_ops_seq":  # TensorFlow calls between layers: a sequence's last step beside its mean
        inputs = keras.Input(shape=x.shape[1:])
        h = L.LSTM(32, return_sequences=True)(inputs)
        h = tf.concat([h[:, -1, :], tf.reduce_mean(h, axis=1)], axis=-1)
        h = L.Dropout(0.2)(tf.nn.relu(L.Dense(64)(h)))
        model = keras.Model(inputs, L.Dense(10, activation="softmax")(h))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.15, verbose=0)
    else:  # tf.keras's MobileNetV3Small, weights=None: its hard-swish is x + 3 and x * (1 / 6) (TFOpLambda)
        model = keras.applications.MobileNetV3Small(weights=None, input_shape=x.shape[1:], classes=int(y.max()) + 1)
        # FIT_APPLICATION
    model.save(out)
""")

#: Both scripts fit keras.applications networks alike (FIT_APPLICATION, in their last branch).
TRAIN, TRAIN_TF = (script.replace("    # FIT_APPLICATION\n", FIT_APPLICATION) for script in (TRAIN, TRAIN_TF))

#: In a fresh plain Keras 3 process (a tf.keras process for the seventh round's tf.keras files): argv = user's
#: model, out folder, probe (.npy / .npz). Prints JSON.
CHECK = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import numpy as np, onnx
    keras = __import__("tf_keras" if os.environ.get("TF_USE_LEGACY_KERAS") == "1" else "keras")

    @keras.saving.register_keras_serializable()
    class MCDropout(keras.layers.Dropout):  # the chapter's class read in inference mode, as deploykit reads it
        pass

    user, out, probe_path = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    ref = keras.saving.load_model(user)
    probe = np.load(probe_path)
    if probe_path.endswith(".npz"):
        probe = dict(probe)
        probe = [probe[t.name] for t in ref.inputs] if len(ref.inputs) > 1 else probe[ref.inputs[0].name]
    def joined(outputs, model):  # several outputs: side by side in the order of their names
        if isinstance(outputs, dict):  # a model built with a dict of outputs
            return np.concatenate([np.asarray(outputs[k], np.float64).reshape(len(outputs[k]), -1)
                                   for k in sorted(outputs)], 1)
        if not isinstance(outputs, (list, tuple)):
            return np.asarray(outputs, np.float64)
        order = sorted(range(len(outputs)), key=lambda i: model.output_names[i])
        return np.concatenate([np.asarray(outputs[i], np.float64).reshape(len(outputs[i]), -1) for i in order], 1)
    report = {}
    if not (out / "model.keras").exists():  # the compressed model missed the budget: the run fell back
        print(json.dumps({"not_shipped": True}))
        raise SystemExit(0)
    try:
        kept = keras.saving.load_model(out / "model.keras")
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:200]}))
        raise SystemExit(0)
    def float64_twin(path):  # the same file with every float32 read as float64: its weights' arithmetic, unrounded
        import tempfile, zipfile
        twin = Path(tempfile.mkdtemp()) / "float64.keras"
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(twin, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                wider = item.filename == "config.json"
                zout.writestr(item, data.replace(b'"float32"', b'"float64"') if wider else data)
        return keras.saving.load_model(twin)
    def wide(x):
        if isinstance(x, list):
            return [wide(a) for a in x]
        return x.astype(np.float64) if x.dtype == np.float32 else x
    want, got = joined(ref.predict(probe, verbose=0), ref), joined(kept.predict(probe, verbose=0), kept)
    try:
        truth = joined(float64_twin(user).predict(wide(probe), verbose=0), ref)
    except Exception as exc:  # a layer without float64 kernels: no floor for this row
        truth, report["float64_error"] = None, f"{type(exc).__name__}: {exc}"[:200]
    temperature = None
    if (out / "model.onnx").exists():
        meta = {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}
        steps = json.loads(meta.get("deploykit.steps", "[]"))  # optimize records a folded T as "temperature(T)"
        folded = [float(s[len("temperature("):-1]) for s in steps if s.startswith("temperature(")]
        temperature = folded[-1] if folded else None
    def tempered(want):  # folded into model.keras's head: the user's outputs at the same temperature
        if not temperature:
            return want
        activation = getattr(ref.layers[-1], "activation", None)
        kind = getattr(activation, "__name__", "")
        if kind == "sigmoid":
            p = np.clip(want, 1e-30, 1 - 1e-16)
            return 1 / (1 + np.exp(-np.log(p / (1 - p)) / temperature))
        if kind == "softmax":
            z = np.log(np.clip(want, 1e-30, None)) / temperature
            want = np.exp(z - z.max(1, keepdims=True))
            return want / want.sum(1, keepdims=True)
        return want / temperature  # logits
    def diff(a, b):
        return float(np.abs(a - b).max()) / max(1.0, float(np.sqrt(np.mean(b ** 2))))
    want = tempered(want)
    report["temperature"] = temperature
    report["model_keras_vs_user"] = diff(got, want)
    if truth is not None:  # the user's own float32 model against its float64 arithmetic: the rounding floor
        truth = tempered(truth)
        report["user_vs_float64"] = diff(want, truth)
        report["model_keras_vs_float64"] = diff(got, truth)
    print(json.dumps(report))
""")
#: Both processes know the user's custom classes, as the user's own scripts import them.
TRAIN, CHECK = CUSTOM_LAYERS + TRAIN, CUSTOM_LAYERS + CHECK


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def data_for(kind: str, folder: Path) -> Path:
    """The .npz the user hands deploykit, as they would have saved it for their own training."""
    import numpy as np

    path = folder / f"{kind}.npz"
    if kind == "tabular":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        np.savez(path, x=x.astype(np.float32), y=y)
        return path
    if kind == "gru":
        return bm.tokens_npz(folder)
    if kind in ("text_cnn", "bilstm"):  # the token sequences, two classes (a sigmoid head, as the examples')
        with np.load(bm.tokens_npz(folder)) as z:
            np.savez(path, x=z["x"], y=(z["y"] > 0).astype(np.int64))
        return path
    with np.load(FASHION) as z:
        x, y = z["x"].astype(np.float32), z["y"]
    if kind == "mnist_convnet":  # the example's own preparation: /255, a channel axis, to_categorical
        np.savez(path, x=(x / 255)[..., None], y=np.eye(10, dtype=np.float32)[y])
    elif kind == "quickstart":  # x_train / 255.0
        np.savez(path, x=x / 255, y=y)
    elif kind == "image_tutorial":  # pixels 0-255 with a channel axis (the model rescales)
        np.savez(path, x=x[..., None], y=y)
    elif kind == "ts_transformer":  # each image a series: 28 steps of 28 features, scaled to [0, 1]
        np.savez(path, x=x / 255, y=y)
    elif kind == "autoencoder":  # the images in [0, 1], reconstructed
        images = (x / 255)[..., None]
        np.savez(path, x=images, y=images)
    elif kind == "anomaly_ae":  # each image one series of 784 values in [0, 1], reconstructed
        series = (x / 255).reshape(len(x), -1, 1)
        np.savez(path, x=series, y=series)
    elif kind == "lstm_ae":  # each image 28 steps of 28 features in [0, 1], reconstructed
        np.savez(path, x=x / 255, y=x / 255)
    elif kind == "forecast":  # 28 steps of 28 features; the target: the mean brightness in twentieths, a whole number
        np.savez(path, x=x / 255, y=np.round(20 * x.mean(axis=(1, 2)) / 255).astype(np.float32))
    elif kind == "docs_attention":  # each image 14x14 (2x2 means) at 16 grey levels as 196 tokens; value: transposed
        small = x.reshape(len(x), 14, 2, 14, 2).mean(axis=(2, 4))
        tokens = np.minimum(small // 16, 15).astype(np.int64)
        np.savez(path, query=tokens.reshape(len(x), -1), value=tokens.transpose(0, 2, 1).reshape(len(x), -1), y=y)
    elif kind in ("ops_pooling", "tf_ops_seq"):  # 28 steps of 28 features in [0, 1]
        np.savez(path, x=x / 255, y=y)
    elif kind == "structured":  # 7x7 means of the pixels (49 numbers) and the row holding the most ink (0-27)
        numeric = x.reshape(len(x), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(x), -1)
        np.savez(path, numeric=numeric, category=x.sum(axis=2).argmax(axis=1)[:, None].astype(np.int64), y=y)
    elif kind in ("xception_small", "tf_transfer"):  # footwear (sandal, sneaker, ankle boot) or not, 32x32 RGB
        padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
        np.savez(path, x=np.repeat(padded[..., None], 3, axis=-1), y=np.isin(y, (5, 7, 9)).astype(np.int64))
    elif kind == "multi_label":  # 784 pixels in [0, 1]; three attributes at once: footwear, upper body, warm
        labels = np.stack([np.isin(y, (5, 7, 9)), np.isin(y, (0, 2, 4, 6)), np.isin(y, (2, 4, 9))], axis=1)
        np.savez(path, x=(x / 255).reshape(len(x), -1), y=labels.astype(np.float32))
    elif kind == "ticket":  # the guide's own dummy data, as it generates it (1280 tickets)
        rng = np.random.default_rng(0)
        np.savez(
            path,
            title=rng.integers(10000, size=(1280, 10)),
            body=rng.integers(10000, size=(1280, 100)),
            tags=rng.integers(2, size=(1280, 12)).astype(np.float32),
            priority=rng.random(size=(1280, 1)),
            department=rng.integers(2, size=(1280, 4)),
        )
    elif kind in ("unet", "tf_segmentation"):  # 32x32 RGB in [0, 1]; the mask as the pets' trimap: 0 object, 1
        # background, 2 border
        padded = np.pad(x, ((0, 0), (2, 2), (2, 2))) / 255
        mask = np.where(padded > 0.35, 0, np.where(padded > 0.05, 2, 1)).astype(np.uint8)
        np.savez(path, x=np.repeat(padded[..., None], 3, axis=-1).astype(np.float32), y=mask)
    elif kind == "tagger":  # 28 steps (rows) of 28 features in [0, 1]; each row tagged: empty, light or heavy ink
        ink = (x / 255).mean(axis=2)
        np.savez(path, x=x / 255, y=np.digitize(ink, (0.05, 0.35)).astype(np.int64))
    elif kind == "text_20k":  # each image 49 words: its 4x4 patches' 16 pixels on or off, a word of 20,000
        bits = x.reshape(len(x), 7, 4, 7, 4).transpose(0, 1, 3, 2, 4).reshape(len(x), 49, 16) > 96
        words = (bits * (1 << np.arange(16))).sum(axis=2) % 19999 + 1
        np.savez(path, x=words.astype(np.int64), y=np.isin(y, (5, 7, 9)).astype(np.int64))
    elif kind == "transformer_text":  # docs_attention's tokens: 14x14 (2x2 means) at 16 grey levels, 196 ids
        small = x.reshape(len(x), 14, 2, 14, 2).mean(axis=(2, 4))
        np.savez(path, x=np.minimum(small // 16, 15).reshape(len(x), -1).astype(np.float32), y=y)
    elif kind == "vit":  # 28x28 images with a channel axis, in [0, 1]
        np.savez(path, x=(x / 255)[..., None], y=y)
    elif kind == "subclassed_mlp":  # 784 pixels in [0, 1]
        np.savez(path, x=(x / 255).reshape(len(x), -1), y=y)
    elif kind == "lstm_seq2seq":  # source: 28 rows of 28 pixels in [0, 1]; target: the class name, one-hot chars
        chars = sorted({c for name in CLASS_NAMES for c in name} | {"\t", "\n"})
        steps = max(len(name) for name in CLASS_NAMES) + 2  # with "\t" before and "\n" after
        text = ["\t" + CLASS_NAMES[label] + "\n" for label in y]
        ids = np.array([[chars.index(c) for c in t.ljust(steps, " " if " " in chars else "\n")] for t in text])
        one_hot = np.eye(len(chars), dtype=np.float32)[ids]
        # named as a fresh Keras 3 process names the example's unnamed layers
        np.savez(path, input_layer=x / 255, input_layer_1=one_hot[:, :-1], dense=one_hot[:, 1:])
    else:  # keras.applications: 32x32 RGB pixels 0-255 (their preprocessing is inside the model)
        padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
        np.savez(path, x=np.repeat(padded[..., None], 3, axis=-1), y=y)
    return path


def probe(data: Path, folder: Path) -> Path:
    """The first 256 rows of the data's inputs (an .npz named after the model's inputs for several)."""
    import numpy as np

    arrays = np.load(data)
    if "x" not in arrays:
        path = folder / "probe.npz"
        np.savez(path, **{k: arrays[k][:256].astype(np.float32) for k in arrays.files})
        return path
    path = folder / "probe.npy"
    np.save(path, arrays["x"][:256].astype(np.float32))
    return path


def train(kind: str, data: Path, epochs: int, model: Path) -> tuple[str, dict]:
    """Train ``kind`` in plain Keras 3 (the seventh round in tf.keras): the error line when it fails, and what the
    training reported (held-out
    accuracy of a keras.applications network, on rows it never trained on)."""
    runner = bm.legacy_keras if kind in SEVENTH else bm.plain_keras3
    if kind in OWN:
        script, argv = TRAIN_TF if kind in SEVENTH else TRAIN, (APPLICATIONS.get(kind, kind), str(data), str(epochs),
                                                                str(model))  # fmt: skip
        if kind in APPLICATION_TRAINING:
            argv += (*(str(v) for v in APPLICATION_TRAINING[kind]), str(HELD_OUT))
    else:
        script, argv = bm.TRAIN, (kind, str(data), str(epochs), str(model))
    done = runner(script, *argv)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [""])[-1], {}
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return "", json.loads(last) if last.startswith("{") else {}


def one(kind: str, folder: Path, epochs: int) -> dict:
    """Train, optimize with defaults, check ``model.keras`` in plain Keras 3: the model's row."""
    if kind in OWN:
        data = data_for(kind, folder)
    else:
        data = bm.multi_npz(kind, folder) if kind in bm.MULTI else bm.data_for(kind, folder)
    model = folder / f"{kind}.keras"
    epochs = min(epochs, EPOCHS.get(kind, epochs))
    trained_before = folder / f"{kind}.training.json"
    if model.exists() and trained_before.exists():  # --work: a model trained by an earlier run, reused as it is
        say(f"{kind}: reusing the model trained earlier in {folder}")
        training = json.loads(trained_before.read_text())
        trained = training.pop("train_seconds")
    else:
        say(f"{kind}: training in {'tf.keras (Keras 2)' if kind in SEVENTH else 'Keras 3'} ({epochs} epochs)")
        start = time.perf_counter()
        error, training = train(kind, data, epochs, model)
        if error:
            return {"model": kind, "exit": None, "error": f"training failed: {error}"}
        trained = round(time.perf_counter() - start, 1)
        trained_before.write_text(json.dumps({**training, "train_seconds": trained}))
    if training:
        say(f"{kind}: held-out accuracy {training['held_out_accuracy']:.3f} on {training['held_out_rows']} rows")
    extra = shown = EXTRA.get(kind, ())
    if kind in SIXTH:  # the user's module of custom classes, given as a file
        (folder / "custom_layers.py").write_text(CUSTOM_LAYERS)
        extra, shown = (*extra, "--custom-objects", str(folder / "custom_layers.py")), ("--custom-objects FILE.py",)
    say(f"{kind}: deploykit optimize {' '.join(shown)}")
    out = folder / f"out_{kind}"
    shutil.rmtree(out, ignore_errors=True)  # --work: a fresh run's artifacts only
    row = {"model": kind, "options": " ".join(shown), "epochs": epochs, "train_seconds": trained, **training}
    row.update(bm.optimize(model, data, out, extra))
    row.update(budget_check(out))
    row.update(nll_check(out))
    runner = bm.legacy_keras if kind in SEVENTH else bm.plain_keras3  # the user's framework reopens model.keras
    done = runner(CHECK, str(model), str(out), str(probe(data, folder)))
    row["keras3"] = (
        json.loads(done.stdout.strip().splitlines()[-1])
        if done.returncode == 0 and done.stdout.strip()
        else {"error": (done.stderr.strip().splitlines() or [""])[-1][:200]}
    )
    say(f"{kind}: exit {row['exit']} in {row['wall_seconds']} s")
    return row


def budget_check(out: Path) -> dict:
    """Each shipped artifact held to the budget rule; each rejected one with its reason (report.json)."""
    from tests.helpers import ships_by_budget

    path = out / "report.json"
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    arts = [r for r in report["artifacts"] if r["file"] != "original.keras"]
    outside = [
        r["file"]
        for r in arts
        if r["verdict"] != "rejected" and r.get("accuracy_change") is not None and not ships_by_budget(r, report)
    ]
    reasons = {r["file"]: " ".join(str(r.get("checks", "")).split())[:160] for r in arts if r["verdict"] == "rejected"}
    return {"outside_budget": outside, "rejections": reasons}


#: Issue 22's target: no shipped artifact's test NLL more than this fraction above the user's model's.
NLL_TARGET = 0.02
#: ... and one run's float32 artifacts agree with the model they were exported from to this (report's max_abs_diff).
AGREE_TARGET = 1e-4


def nll_check(out: Path) -> dict:
    """The worst shipped test NLL change vs the user's model (``nll_change`` of report.json's rows) and its file,
    and the largest ``max_abs_diff`` of the shipped float32 files, as the report records them (nothing invented:
    a regressor, or a classifier whose report carries no NLL, gets the reason instead)."""
    path = out / "report.json"
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    shipped = [r for r in report["artifacts"] if r["file"] != "original.keras" and r["verdict"] != "rejected"]
    found: dict = {}
    measured = [r for r in shipped if r.get("nll_change") is not None] + mc_nll_row(report, shipped)
    if measured:
        worst = max(measured, key=lambda r: r["nll_change"])
        found["nll_worst"] = {"file": worst["file"], "change": worst["nll_change"], "measured": len(measured)}
    elif report["original"].get("accuracy") is None:  # the MC file's Gaussian NLL has no user's figure beside it
        gaussian = ((report.get("mc") or {}).get("mc") or {}).get("nll")
        found["nll_worst"] = {"na": "regression", **({"mc_gaussian_nll": gaussian} if gaussian is not None else {})}
    else:
        found["nll_worst"] = {"na": "no NLL in report.json"}
    exports = [r for r in measured if r.get("nll_export_change") is not None]
    if exports:  # the same files against the model each was exported from (what validate.max_nll_increase holds)
        worst = max(exports, key=lambda r: r["nll_export_change"])
        found["nll_worst"]["export"] = {"file": worst["file"], "change": worst["nll_export_change"]}
    # model.keras's max_abs_diff is against the user's model (pruning moves it): the exports' against their source
    floats = [
        r
        for r in shipped
        if r.get("precision") == "float32" and r.get("format") != "keras" and r.get("max_abs_diff") is not None
    ]
    if floats:
        worst = max(floats, key=lambda r: r["max_abs_diff"])
        found["float32_agreement"] = {
            "file": worst["file"],
            "max_abs_diff": worst["max_abs_diff"],
            "files": len(floats),
        }
    return found


def mc_nll_row(report: dict, shipped: list[dict]) -> list[dict]:
    """The shipped MC file's test NLL change vs the user's model, from the report's MC section when its artifact row
    carries none (a report from before the MC file was held to the NLL budget): the MC model's test NLL over the
    original row's test NLL (both on the test split)."""
    mc_row = next((r for r in shipped if r.get("format") == "onnx-mc"), None)
    if mc_row is not None and mc_row.get("nll_change") is not None:
        return []  # the row itself is measured
    mc_file = None if mc_row is None else mc_row["file"]
    mc = ((report.get("mc") or {}).get("mc") or {}).get("nll")
    original = next((r.get("nll") for r in report["artifacts"] if r["file"] == "original.keras"), None)
    if mc_file is None or mc is None or not original or report["original"].get("accuracy") is None:
        return []
    return [{"file": f"{mc_file} (MC section)", "nll_change": mc / original - 1}]


def nll_cell(row: dict) -> str:
    """The worst shipped test NLL change and its file, the reason it is absent, or a dash (row not re-run)."""
    worst = row.get("nll_worst")
    if worst is None:
        return "—"
    if "na" in worst:
        mc = worst.get("mc_gaussian_nll")
        return (
            f"n/a ({worst['na']}"
            + ("" if mc is None else f"; MC Gaussian NLL {mc:.3g} nats, none for the user's")
            + ")"
        )
    flag = "" if worst["change"] <= NLL_TARGET else " **over 2 %**"
    return f"{100 * worst['change']:+.2f}% (`{worst['file']}`, {worst['measured']} files){flag}"


def nll_summary(rows: list[dict]) -> str:
    """How many rows with a measured NLL keep every shipped file within the target."""
    measured = [r for r in rows if "change" in r.get("nll_worst", {})]
    if not measured:
        return ""
    within = [r for r in measured if r["nll_worst"]["change"] <= NLL_TARGET]
    return (
        f"**{len(within)} of {len(measured)} rows with a test NLL keep every shipped file within "
        f"+{100 * NLL_TARGET:g} % of the user's model's.**"
    )


def agreement_cell(row: dict) -> str:
    """The largest max |diff| of a shipped float32 file vs the model it was exported from, or a dash."""
    found = row.get("float32_agreement")
    if found is None:
        return "—"
    flag = "" if found["max_abs_diff"] <= AGREE_TARGET else " **over 1e-4**"
    return f"{found['max_abs_diff']:.1e} (`{found['file']}`, {found['files']} files){flag}"


def markdown(rows: list[dict]) -> str:
    ok = [r for r in rows if r.get("exit") == 0]
    lines = [
        "# The newcomer's models: Keras 3 and tf.keras files through `deploykit optimize`",
        "",
        "Each model built as its authors publish it and trained in plain Keras 3 (the seventh round's tf.keras files: "
        "in tf.keras, `TF_USE_LEGACY_KERAS=1`, where `model.keras` is reopened too), saved with `model.save`, then "
        "`deploykit optimize MODEL --data DATA` with defaults (options shown) in its own process. *Within budget*: "
        "shipped artifacts / those the budget rule ships (validation accepts, test confirms; "
        "`tests/helpers.ships_by_budget`). *model.keras vs user*: `model.keras` reopened in a fresh plain Keras 3 "
        "process, its outputs against the user's model on 256 rows (with a kept temperature applied; target "
        f"≤ {TARGET:g} where nothing was pruned). *user float32 vs float64*: the user's own model against the same "
        "file computed in float64 (its config's float32 read as float64), with the same temperature: how far float32 "
        "rounding alone moves the user's outputs on those rows, the floor a rewritten float32 model is judged against; "
        "*model.keras vs float64*: deploykit's file against that float64 computation. "
        "*worst shipped test NLL vs user*: the largest `nll_change` (test NLL vs the user's model's on the same "
        f"rows, report.json) over the shipped files (issue 22's target: at most +{100 * NLL_TARGET:g} %), with its "
        "file and how many shipped files carry an NLL (a classifier's only: a regressor has none; the MC file's "
        "is its row's, or in a report from before its row carried one, its test NLL in the report's MC section over "
        "the user's model's test NLL; the run's NLL budget rejects a file beyond +2 %, see the rejected column); "
        "*float32 files vs source*: "
        "the largest `max_abs_diff` "
        "of the shipped float32 exports (ONNX, TFLite; `model.keras` is held against the user's model in its own "
        "column) against the Keras model each was exported from (their tolerance: "
        f'{AGREE_TARGET:g}). Both read from the run\'s report.json; "—": the row was not re-run since they were '
        "recorded. Wall times are on 2 CPU cores shared with other work (loaded).",
        "",
        "The keras.applications networks (`weights=None`, 32x32x3: the Fashion sample padded and repeated over 3 "
        "channels, 10 classes) are trained from scratch on at most the rows and epochs shown, so that each row runs "
        f"on 2 shared cores; the data file's last {HELD_OUT} rows are never trained on, and *training* gives the "
        "user's model's accuracy on them (chance: 0.1). deploykit gets the whole file, as a user would hand it. "
        "Their BatchNormalization layers train with momentum 0.9 (keras.applications: 0.99, MobileNetV3 0.999; "
        "a training setting, unused at inference): at the default, a few hundred steps leave the moving statistics "
        "near their initial values and the held-out accuracy at chance (MobileNetV3Small: 0.103 after 3 epochs).",
        "",
        f"**{len(ok)} of {len(rows)} exit 0.** {nll_summary(rows)}".rstrip(),
        "",
        "| model | training | options | exit | train / optimize wall s (loaded) | optimize CPU s | kept sparsity | "
        "shipped | within budget | model.keras vs user | user float32 vs float64 | model.keras vs float64 | "
        "worst shipped test NLL vs user | float32 files vs source | rejected (reason) |",
        "|---|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        k3 = r.get("keras3", {})
        diff = k3.get("model_keras_vs_user")
        dense = r.get("kept_sparsity") == "dense"
        cell = "—" if diff is None else f"{diff:.1e}" + ("" if dense else " (pruned)")
        if k3.get("temperature"):
            cell += f" (T {k3['temperature']:.3g})"
        if "error" in k3:
            cell = f"error: {k3['error'][:80]}"
        if k3.get("not_shipped"):
            cell = "not shipped (fallback)"
        shipped = r.get("shipped", [])
        outside = r.get("outside_budget", [])
        within = f"{len(shipped) - len(outside)} / {len(shipped)}" + (
            f" (outside: {', '.join(outside)})" if outside else ""
        )
        rejected = "; ".join(f"`{f}`: {why}" for f, why in r.get("rejections", {}).items()) or "—"
        error = f" error: {r['error'][:200]}" if r.get("error") else ""
        lines.append(
            f"| {r['model']} | {training_cell(r)} | {r.get('options') or 'defaults'} | {r.get('exit')} | "
            f"{r.get('train_seconds', '—')} / "
            f"{r.get('wall_seconds', '—')} | {r.get('cpu_seconds', '—')} | {r.get('kept_sparsity', '—')} | "
            f"{len(shipped)} | {within} | {cell} | {_figure(k3, 'user_vs_float64')} | "
            f"{_figure(k3, 'model_keras_vs_float64')} | {nll_cell(r)} | {agreement_cell(r)} | "
            f"{(rejected + error).replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def _figure(check: dict, key: str) -> str:
    """A difference of the Keras 3 check, or a dash when the row was measured before it existed (or has none)."""
    value = check.get(key)
    return "—" if value is None else f"{value:.1e}"


def training_cell(row: dict) -> str:
    """How the user's model was trained (a keras.applications network: rows, batch, held-out accuracy)."""
    epochs = f"{row['epochs']} epochs" if row.get("epochs") else "—"
    if "held_out_accuracy" not in row:
        return epochs
    return (
        f"{row['train_rows']} rows x {epochs}, batch {row['batch_size']}; held-out accuracy "
        f"{row['held_out_accuracy']:.3f} ({row['held_out_rows']} rows)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs at most (fewer for the big networks)")
    ap.add_argument("--merge", default="", help="comma-separated foreign.json files of runs side by side: one table")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of foreign.json / .md (a run beside another)")
    ap.add_argument("--work", type=Path, help="keep each model's folder here; a model trained there is reused")
    ap.add_argument("--note", default="", help="a sentence about the run's machine, kept in foreign.json and .md")
    args = ap.parse_args()
    if args.merge:  # two runs at once (one per core) write their own foreign.json: their rows in one table
        rows = {r["model"]: r for f in args.merge.split(",") for r in json.loads(Path(f).read_text())["rows"]}
        ordered = [rows[k] for k in MODELS if k in rows]
        note = args.note or ""
        write_results("foreign", {"rows": ordered, "note": note}, markdown(ordered) + (f"\n{note}\n" if note else ""))
        return
    kinds = tuple(k for k in args.models.split(",") if k)
    unknown = sorted(set(kinds) - set(MODELS))
    if unknown:
        sys.exit(f"unknown model(s): {', '.join(unknown)}")
    if not FASHION.exists():
        sys.exit(f"the Fashion sample is absent ({FASHION.name} beside the project): nothing to measure")
    rows = last_rows("foreign", args.results)
    for kind in kinds:
        if args.work:  # the trained model and optimize's artifacts kept (re-run optimize alone on the same model)
            (args.work / kind).mkdir(parents=True, exist_ok=True)
            rows[kind] = one(kind, args.work / kind, args.epochs)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                rows[kind] = one(kind, Path(tmp), args.epochs)
        ordered = [rows[k] for k in MODELS if k in rows]
        write_results("foreign", {"rows": ordered}, markdown(ordered), args.results, quiet=True)  # after each model
    print((args.results / "foreign.md").read_text())


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
