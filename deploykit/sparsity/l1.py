"""l1 sparsity: fine-tune with an l1 kernel penalty, then zero the weights below a threshold."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deploykit.core.evaluate import score
from deploykit.core.layers import support_for
from deploykit.core.task import Task
from deploykit.io.keras3_api import keras3_boundary
from deploykit.sparsity.config import L1Config
from deploykit.sparsity.dead_neurons import apply_compact
from deploykit.sparsity.report import kernel_sparsity, sparsity_report
from deploykit.sparsity.tuning import Teacher, check_inputs, choose_layers, fine_tune, rebuild, teacher_of


@keras3_boundary
def sparsify_l1(
    model,
    data,
    l1: float | None = None,
    threshold: float | None = None,
    *,
    config: L1Config | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    skip_layers: tuple[str, ...] | None = None,
    skip_output: bool | None = None,
    compact: bool | None = None,
    distill: bool | None = None,
    progress: Callable[[str], None] | None = None,
    teacher: Teacher | None = None,
):
    """Fine-tune a copy of ``model`` with ``L1(l1)`` on the selected prunable kernels, then set
    ``|w| < threshold`` to 0.

    The penalty is dropped from the returned model. The report holds the test
    accuracy before, after fine-tuning (``accuracy_before_zeroing``) and after
    zeroing. With ``distill``, fine-tuning distils from ``model`` (see :func:`prune`).
    Returns ``(model, SparsityReport)``.
    """
    config = (config or L1Config()).with_options(
        l1=l1,
        threshold=threshold,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        skip_layers=skip_layers,
        skip_output=skip_output,
        compact=compact,
        distill=distill,
    )
    dense = check_inputs(model, data, "sparsify_l1")
    chosen = set(choose_layers(dense, config, "sparsify_l1"))

    from deploykit.backend import keras

    def regularized(layer):
        if layer.name not in chosen:
            return None
        key = _regularizer_key(support_for(layer, unsafe=True).pruned_kernel[0])
        return layer.__class__.from_config({**layer.get_config(), key: keras.regularizers.L1(config.l1)})

    working = rebuild(model, regularized)
    # a recurrent layer keeps its kernel on its cell
    kernels = [
        getattr(getattr(l, "cell", l), support_for(l, unsafe=True).pruned_kernel[0])
        for l in working.layers
        if l.name in chosen
    ]

    def status() -> str:
        small = sum(int(np.count_nonzero(np.abs(k.numpy()) < config.threshold)) for k in kernels)
        return f"|w| < {config.threshold:g}: {small / sum(int(np.prod(k.shape)) for k in kernels):.3f}"

    teacher = (teacher or teacher_of(model, data)) if config.distill else None
    tuned = fine_tune(working, data, config, status=status, progress=progress, teacher=teacher)
    result = rebuild(model)  # the original layers (no l1 penalty), with the fine-tuned weights
    result.set_weights(working.get_weights())
    accuracy_tuned = None if data.task is Task.REGRESSION else score(result, data.x_test, data.y_test)
    for layer in result.layers:
        if layer.name in chosen:
            weights, k = layer.get_weights(), support_for(layer, unsafe=True).pruned_kernel[1]
            weights[k] = np.where(np.abs(weights[k]) < config.threshold, np.float32(0), weights[k])
            layer.set_weights(weights)
    layers = kernel_sparsity(result, dict.fromkeys(chosen))
    result, compacted = apply_compact(result, layers, config.compact, data)
    report = sparsity_report(
        "l1", model, result, layers, data, tuned, compacted, config, accuracy_before_zeroing=accuracy_tuned
    )
    return result, report


def _regularizer_key(kernel: str) -> str:
    """The config key of a kernel's regularizer: ``kernel_regularizer``, ``depthwise_regularizer``,
    ``pointwise_regularizer``."""
    return "kernel_regularizer" if kernel == "kernel" else kernel.replace("_kernel", "_regularizer")
