"""One traced inference function per model, for loops that score the same model many times.

:func:`deploykit.core.evaluate.outputs` calls the model eagerly: right for a model scored once or twice (no
function to trace), but each eager call runs every layer as separate Python-dispatched ops. A keras.applications
network holds hundreds of layers (MobileNetV3Small: 239, its hard-swish saved as op layers), so an eager call costs
~0.5 s of dispatch whatever the row count, and the sparsity scan scores the model layers x levels times (46 x 6 on
MobileNetV3Small). :class:`CompiledOutputs` traces the model once and reuses the graph: the model's weights are
variables, so weights swapped in place with ``set_weights`` are read by the same graph without tracing again.
"""

from __future__ import annotations

import numpy as np

from deploykit.core.evaluate import score_model_outputs
from deploykit.core.task import Task


class CompiledOutputs:
    """``model``'s inference outputs through one traced function; ``calls`` / ``traces`` count evaluations / tracings.

    The batch axis is left unknown (``reduce_retracing``), so a last, shorter batch reuses the graph.
    """

    def __init__(self, model, batch: int = 4096):
        from deploykit.backend import tf

        self.model, self.batch = model, batch
        self.calls = 0
        self.traces = 0

        def forward(x):
            self.traces += 1  # Python runs only while tracing
            return model(x, training=False)

        self._fn = tf.function(forward, reduce_retracing=True)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        parts = [np.asarray(self._fn(x[i : i + self.batch])) for i in range(0, len(x), self.batch)]
        return np.concatenate(parts) if parts else np.zeros((0, *self.model.output_shape[1:]), np.float32)

    def score(self, x: np.ndarray, y: np.ndarray, task: Task = Task.CLASSIFICATION) -> float:
        """What :func:`deploykit.core.evaluate.score` gives, through the traced function."""
        return score_model_outputs(self.model, self(x), y, task)


class EagerOutputs:
    """What :class:`CompiledOutputs` counts and scores, through eager calls (:func:`deploykit.core.evaluate.score`):
    the reference a traced loop is checked and timed against."""

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def score(self, x: np.ndarray, y: np.ndarray, task: Task = Task.CLASSIFICATION) -> float:
        from deploykit.core.evaluate import score

        self.calls += 1
        return score(self.model, x, y, task)
