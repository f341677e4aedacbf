"""TF-MOT magnitude pruning of the prunable layers (Dense and convolutions), with a schedule derived from the data.

TF-MOT's registry prunes Dense, Conv1D/Conv2D ``kernel`` and SeparableConv2D's ``pointwise_kernel``; it
registers DepthwiseConv2D with no prunable weight, so its ``depthwise_kernel`` is pruned through TF-MOT's own
extension point (a ``PrunableLayer`` subclass, swapped back to the plain Keras layer once stripped).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from deploykit.errors import ConfigError, StepError
from deploykit.io.keras3_api import keras3_boundary
from deploykit.sparsity.config import PruneConfig
from deploykit.sparsity.dead_neurons import apply_compact
from deploykit.sparsity.holdout import fit_rows
from deploykit.sparsity.report import PruneSchedule, kernel_sparsity, pruned_kernel, sparsity_report
from deploykit.sparsity.tuning import Teacher, check_inputs, choose_layers, fine_tune, rebuild, teacher_of


@keras3_boundary
def prune(
    model,
    data,
    target_sparsity: float | None = None,
    *,
    config: PruneConfig | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    block_size=None,
    layer_sparsity: dict[str, float] | None = None,
    skip_layers: tuple[str, ...] | None = None,
    skip_output: bool | None = None,
    compact: bool | None = None,
    distill: bool | None = None,
    progress: Callable[[str], None] | None = None,
    teacher: Teacher | None = None,
    callbacks: tuple = (),
):
    """Prune a copy of ``model`` to ``target_sparsity`` (default 0.8) while fine-tuning on ``data``.

    Each selected layer (Dense, Conv, DepthwiseConv2D, SeparableConv2D) is wrapped with ``prune_low_magnitude`` and a
    ``PolynomialDecay`` from 0 to its target; the keyword options override
    ``config``. The result is stripped of the pruning wrappers. Raises
    StepError when a pruned layer misses its target by more than
    ``config.tolerance``. With ``distill``, fine-tuning distils from ``model``
    (``teacher``: its outputs, precomputed by :func:`~deploykit.sparsity.tuning.teacher_of`
    to share them between runs). ``callbacks``: more Keras callbacks of the fine-tuning (a deadline's stop).
    Returns ``(pruned_model, SparsityReport)``.
    """
    config = (config or PruneConfig()).with_options(
        target_sparsity=target_sparsity,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        block_size=block_size,
        layer_sparsity=layer_sparsity,
        skip_layers=skip_layers,
        skip_output=skip_output,
        compact=compact,
        distill=distill,
    )
    dense = check_inputs(model, data, "prune")
    chosen = choose_layers(dense, config, "prune", tuple(config.layer_sparsity))
    targets = {name: config.target_for(name) for name in chosen if config.target_for(name) > 0}
    _check_blocks(model, targets, config.block_size)

    import tensorflow_model_optimization as tfmot

    from deploykit.backend import tf  # noqa: F401  (first: makes TF-MOT use tf_keras)

    sparsity = tfmot.sparsity.keras
    trained_on = fit_rows(len(data.x_train), config.tune_holdout)  # the rows fine_tune trains on (its holdout out)
    schedule = PruneSchedule.derive(trained_on, config.batch_size, config.epochs, config.end_fraction)

    def wrap(layer):
        if layer.name not in targets:
            return None
        decay = sparsity.PolynomialDecay(
            initial_sparsity=0.0,
            final_sparsity=targets[layer.name],
            begin_step=schedule.begin_step,
            end_step=schedule.end_step,
            frequency=schedule.frequency,
        )
        fresh = _prunable_class(layer).from_config(layer.get_config())
        return sparsity.prune_low_magnitude(fresh, pruning_schedule=decay, block_size=config.block_size)

    working = rebuild(model, wrap)
    wrappers = [l for l in working.layers if hasattr(l, "pruning_step")]

    def schedule_done() -> bool:
        return all(int(w.pruning_step.numpy()) >= schedule.end_step for w in wrappers)

    def status() -> str:
        kernels = [weight.numpy() for w in wrappers for weight, _, _ in w.pruning_vars]
        return f"sparsity {sum(int(np.count_nonzero(k == 0)) for k in kernels) / sum(k.size for k in kernels):.3f}"

    tuned = fine_tune(
        working,
        data,
        config,
        callbacks=(sparsity.UpdatePruningStep(), *callbacks),
        eligible=schedule_done,
        status=status,
        progress=progress,
        teacher=(teacher or teacher_of(model, data)) if config.distill else None,
    )
    pruned = rebuild(sparsity.strip_pruning(working), _plain_layer)
    layers = kernel_sparsity(pruned, targets)
    _check_reached(layers, config, schedule)

    result, compacted = apply_compact(pruned, layers, config.compact, data)
    report = sparsity_report(
        "prune",
        model,
        result,
        layers,
        data,
        tuned,
        compacted,
        config,
        target_sparsity=config.target_sparsity,
        schedule=schedule,
    )
    return result, report


def _prunable_class(layer):
    """The class to wrap: DepthwiseConv2D as a PrunableLayer naming its depthwise kernel, others unchanged."""
    from deploykit.backend import keras

    return _prunable_depthwise() if type(layer) is keras.layers.DepthwiseConv2D else type(layer)


@functools.cache
def _prunable_depthwise() -> type:
    """tf_keras DepthwiseConv2D declaring ``depthwise_kernel`` prunable (TF-MOT's documented custom-layer route)."""
    import tensorflow_model_optimization as tfmot

    from deploykit.backend import keras

    class PrunableDepthwiseConv2D(keras.layers.DepthwiseConv2D, tfmot.sparsity.keras.PrunableLayer):
        def get_prunable_weights(self):
            return [self.depthwise_kernel]

    return PrunableDepthwiseConv2D


def _plain_layer(layer):
    """The plain Keras layer for a stripped PrunableDepthwiseConv2D (a saved file holds Keras classes only)."""
    if type(layer) is _prunable_depthwise():
        from deploykit.backend import keras

        return keras.layers.DepthwiseConv2D.from_config(layer.get_config())
    return None


def _check_blocks(model, targets: dict[str, float], block: tuple[int, int]) -> None:
    """TF-MOT's block masks need a 2-D kernel (Dense) with at least two blocks along each axis."""
    if block == (1, 1):
        return
    for name in targets:
        shape = pruned_kernel(model.get_layer(name)).shape
        if len(shape) != 2:
            raise ConfigError(
                f"prune: block_size {block[0]}x{block[1]} applies to Dense kernels only (TF-MOT); layer {name!r} "
                f"has a {len(shape)}-D kernel: skip it (skip_layers) or use 1x1 blocks"
            )
        rows, cols = shape
        if -(-rows // block[0]) < 2 or -(-cols // block[1]) < 2:
            raise ConfigError(
                f"prune: block_size {block[0]}x{block[1]} leaves layer {name!r} (kernel {rows}x{cols}) "
                "fewer than two blocks along an axis; use smaller blocks"
            )


def _check_reached(layers, config: PruneConfig, schedule: PruneSchedule) -> None:
    misses = [l for l in layers if l.target is not None and abs(l.sparsity - l.target) > config.tolerance]
    if misses:
        detail = "; ".join(f"layer {l.name!r} reached {l.sparsity:.3f}, target {l.target:.3f}" for l in misses)
        raise StepError(
            f"prune: sparsity missed by more than {config.tolerance:.3f}: {detail} "
            f"(schedule: end step {schedule.end_step} of {schedule.total_steps}, frequency {schedule.frequency}, "
            f"block {config.block_size[0]}x{config.block_size[1]})"
        )
