"""The core every step shares: the model as a graph, the layer table, the task, and the served-output contract.

``graph`` (models as graphs of layer specs) and ``chain`` (its single-path view), ``layers`` (the per-layer
support table), ``task`` and ``taskspec`` (what a model predicts, as a type), ``contract`` (the served-output
table), ``evaluate`` (a model's outputs and score), ``multi_io`` / ``multi_io_model`` (several inputs or
outputs packed into one), ``modelfile`` and ``custom_dropout`` (model files read without deserializing).

Layer 1 of the layering (``tests/test_layering.py``): it imports only deploykit's top-level utility modules.
Import the module that defines a name; this package re-exports nothing, so importing it stays free.
"""

__all__: list[str] = []
