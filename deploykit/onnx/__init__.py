"""ONNX files as deploykit reads and edits them: ``file`` (checked, external data contained), ``sessions``
(the one way an onnxruntime session is opened) and ``graph_ops`` (the ``GraphEditor`` that appends nodes to an
exported graph). Layer 2: it imports only ``deploykit.core`` and the top-level utility modules, never TensorFlow.

The MC Dropout emitters keep their own builder (``deploykit.uncertainty.mc_layers.OnnxGraph``); merging it with
``GraphEditor`` is open (issue #25).
"""

__all__: list[str] = []
