"""Keras 3 model files in and out of tf_keras: ``convert`` (import and save), and the rewrites it needs.

``ops`` rewrites operation layers and nested blocks as built-in layers, ``activations`` rebuilds activations
tf_keras lacks, ``rnn`` carries recurrent layers' options across. Layer 2: it imports only ``deploykit.core``
and the top-level utility modules. The Python API boundary (Keras 3 in, Keras 3 out) is
``deploykit.io.keras3_api``.
"""

__all__: list[str] = []
