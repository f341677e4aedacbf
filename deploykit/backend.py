"""The one module that decides which Keras deploykit uses.

TensorFlow Model Optimization only accepts Keras 2 models, and tf2onnx only
converts them, so deploykit works in ``tf_keras`` (Keras 2) throughout. Keras 3
files written by users of TensorFlow >= 2.16 are imported by ``deploykit.io.models``,
which rebuilds them in ``tf_keras``.

Every other module gets TensorFlow and Keras from here::

    from deploykit.backend import tf, keras

Importing this module is what imports TensorFlow, so the light parts of
deploykit (the CLI's help, the server) must import it lazily.
"""

from __future__ import annotations

import os

from deploykit.log import quiet_native

# Must be set before TensorFlow is imported: it makes ``tf.keras`` (and
# TF-MOT, which reads it) resolve to tf_keras instead of Keras 3.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# TensorFlow's C++ side prints while it starts (oneDNN, CUDA probing on a machine without a GPU),
# before TF_CPP_MIN_LOG_LEVEL applies; it would bury deploykit's one-line errors.
with quiet_native():
    import tensorflow as tf  # noqa: E402

    tf.config.list_physical_devices()  # device probing happens here, quietly, rather than at the first op

import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras", "is_tf_keras_model", "set_seed"]


def is_tf_keras_model(obj: object) -> bool:
    """True for a tf_keras ``Model`` (what every deploykit step takes)."""
    return isinstance(obj, keras.Model)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow for a reproducible run."""
    keras.utils.set_random_seed(int(seed))
