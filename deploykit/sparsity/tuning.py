"""What prune and sparsify_l1 share: input checks, layer choice, model copies, fine-tuning, accuracy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deploykit.errors import ConfigError, StepError, UsageError
from deploykit.sparsity.report import SparsityReport, model_sparsity, saved_sizes

def check_inputs(model, data, step: str) -> list[str]:
    """Refuse what the step cannot use; return the names of the model's Dense layers."""
    from deploykit.backend import is_tf_keras_model
    from deploykit.graph import graph_from_model

    if not is_tf_keras_model(model):
        raise UsageError(f"{step}: expects a tf_keras model (load files with deploykit.load_model), got {type(model).__name__}")
    specs = [node.spec for node in graph_from_model(model).nodes]
    dense = [spec.name for spec in specs if spec.support.prunable]  # the layer table says which kernels TF-MOT prunes
    if not dense:
        kinds = ", ".join(spec.class_name for spec in specs) or "none"
        raise StepError(f"{step}: model {model.name!r} has no Dense layer (its layers: {kinds})")
    if data is not None:
        data.check_model(model)
    return dense


def choose_layers(dense: list[str], config, step: str, requested: tuple[str, ...] = ()) -> list[str]:
    """The Dense layers the step changes: all but ``skip_layers`` and (by default) the output layer.

    Layers named in ``requested`` (e.g. per-layer targets) are included even if
    they are the output layer; naming an unknown or skipped layer is a ConfigError.
    """
    known = ", ".join(dense)
    for name in (*config.skip_layers, *requested):
        if name not in dense:
            raise ConfigError(f"{step}: {name!r} is not a Dense layer of the model (Dense layers: {known})")
    for name in requested:
        if name in config.skip_layers:
            raise ConfigError(f"{step}: layer {name!r} is both skipped and given a target")
    output = dense[-1] if config.skip_output else None
    chosen = [n for n in dense if n not in config.skip_layers and (n != output or n in requested)]
    if not chosen:
        raise ConfigError(f"{step}: every Dense layer is skipped (Dense layers: {known}; the output layer is skipped by default)")
    return chosen


def rebuild(model, make: Callable | None = None):
    """A fresh copy of ``model`` (new layers, weights copied); ``make(layer)`` may return a replacement layer.

    A replacement may be a wrapper (TF-MOT's pruning wrapper): the weights go
    to the layer it wraps. The input model is never touched.
    """
    from deploykit.backend import keras

    def clone(layer):
        made = make(layer) if make else None
        return made if made is not None else layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    old_layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]
    new_layers = [l for l in copy.layers if type(l).__name__ != "InputLayer"]
    for old, new in zip(old_layers, new_layers, strict=True):
        target = new.layer if isinstance(new, keras.layers.Wrapper) else new
        target.set_weights(old.layer.get_weights() if isinstance(old, keras.layers.Wrapper) else old.get_weights())
    return copy


def outputs(model, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The model's inference outputs (direct calls: no per-model predict function to trace)."""
    parts = [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, *model.output_shape[1:]), np.float32)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs(model, x), axis=-1) == y))


def loss_for(model):
    """Sparse categorical cross-entropy on the output (from logits when the last layer is linear)."""
    from deploykit.backend import keras

    last = model.layers[-1]
    last = last.layer if isinstance(last, keras.layers.Wrapper) else last
    return keras.losses.SparseCategoricalCrossentropy(from_logits=last.get_config().get("activation") == "linear")


@dataclass
class TuneResult:
    epochs_run: int
    best_epoch: int | None  # 1-based; None if no epoch was eligible


def fine_tune(
    model,
    data,
    config,
    *,
    callbacks: tuple = (),
    eligible: Callable[[], bool] = lambda: True,
    status: Callable[[], str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Fine-tune ``model`` in place with Nadam; keep the best eligible epoch (lowest val_loss).

    Early stopping and the choice of the best epoch only consider epochs for
    which ``eligible()`` is true (for pruning: once the schedule has ended, so
    restoring never brings back weights below the target sparsity).
    """
    from deploykit.backend import keras, set_seed

    set_seed(config.seed)
    model.compile(optimizer=keras.optimizers.Nadam(config.learning_rate), loss=loss_for(model), metrics=["accuracy"])
    best, lines = _callbacks(config, eligible, status, progress)
    history = model.fit(
        data.x_train, data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=config.epochs, batch_size=config.batch_size, verbose=0,
        callbacks=[*callbacks, best, lines],
    )
    return TuneResult(len(history.epoch), best.best_epoch)


def _callbacks(config, eligible, status, progress):
    """(early stopping among eligible epochs, one progress line per epoch) as Keras callbacks."""
    from deploykit.backend import keras

    class BestEligible(keras.callbacks.Callback):
        """Early stopping on val_loss among eligible epochs; restores the best of them at the end."""

        def __init__(self):
            super().__init__()
            self.best_loss, self.best_epoch, self.best_weights, self.wait = np.inf, None, None, 0

        def on_epoch_end(self, epoch, logs=None):
            if not eligible():
                return
            loss = float((logs or {}).get("val_loss", np.inf))
            if loss < self.best_loss:
                self.best_loss, self.best_epoch, self.best_weights, self.wait = loss, epoch + 1, self.model.get_weights(), 0
            else:
                self.wait += 1
                if self.wait >= config.patience:
                    self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    class EpochLines(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if progress is None:
                return
            logs = logs or {}
            parts = [f"epoch {epoch + 1}/{config.epochs}"]
            parts += [f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs]
            if status:
                parts.append(status())
            if best.best_epoch == epoch + 1:
                parts.append("(best)")
            progress("  ".join(parts))

    best = BestEligible()
    return best, EpochLines()


def sparsity_report(method: str, model, result, layers, data, tuned: TuneResult, compacted, config, **extra):
    """The SparsityReport of a fine-tuning step: ``model`` before, ``result`` after."""
    before, after = saved_sizes(model), saved_sizes(result)
    return SparsityReport(
        method=method,
        layers=layers,
        sparsity=model_sparsity(layers),
        accuracy_before=accuracy(model, data.x_test, data.y_test),
        accuracy_after=accuracy(result, data.x_test, data.y_test),
        file_bytes_before=before[0], file_bytes_after=after[0],
        gzip_bytes_before=before[1], gzip_bytes_after=after[1],
        epochs_run=tuned.epochs_run, best_epoch=tuned.best_epoch,
        compact=compacted, config=config.to_dict(), **extra,
    )
