"""ONNX files as deploykit reads, builds and edits them: ``file`` (checked, external data contained), ``sessions``
(the one way an onnxruntime session is opened), ``builder`` (the one graph builder: the MC Dropout graph and every
post-hoc edit append their nodes with ``GraphBuilder``) and ``graph_ops`` (metadata entries, renames, topological
order). Layer 2: it imports only ``deploykit.core`` and the top-level utility modules, never TensorFlow.
"""

__all__: list[str] = []
