"""What prune and sparsify_l1 share: input checks, layer choice, model copies, fine-tuning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deploykit.core.task import Task
from deploykit.errors import ConfigError, StepError, UsageError


def check_inputs(model, data, step: str) -> list[str]:
    """Refuse what the step cannot use; return the names of the model's prunable layers (the layer table's)."""
    from deploykit.backend import is_tf_keras_model
    from deploykit.core.graph import graph_from_model

    if not is_tf_keras_model(model):
        raise UsageError(
            f"{step}: expects a tf_keras model (load files with deploykit.load_model), got {type(model).__name__}"
        )
    # a live model: its code (a trusted Lambda too) loaded already; reading its layers runs none
    specs = [node.spec for node in graph_from_model(model, unsafe=True).nodes]
    dense = [spec.name for spec in specs if spec.support.prunable]  # the layer table says which kernels TF-MOT prunes
    if not dense:
        kinds = ", ".join(spec.class_name for spec in specs) or "none"
        raise StepError(
            f"{step}: model {model.name!r} has no Dense layer or convolution to prune (its layers: {kinds})"
        )
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
            raise ConfigError(
                f"{step}: {name!r} is not a Dense layer or convolution of the model (prunable layers: {known})"
            )
    for name in requested:
        if name in config.skip_layers:
            raise ConfigError(f"{step}: layer {name!r} is both skipped and given a target")
    output = dense[-1] if config.skip_output else None
    chosen = [n for n in dense if n not in config.skip_layers and (n != output or n in requested)]
    if not chosen:
        raise ConfigError(
            f"{step}: every prunable layer is skipped (prunable layers: {known}; "
            "the output layer is skipped by default)"
        )
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


def loss_for(model, task: Task = Task.CLASSIFICATION):
    """Sparse categorical cross-entropy on the output (from logits when the last layer is linear); MSE for a regressor.

    A binary head (one sigmoid or linear unit) takes the cross-entropy of its two-class probabilities, which is
    Keras' ``binary_crossentropy`` on 0/1 labels (its TaskSpec's log-probabilities).
    """
    from deploykit.backend import keras

    if task is Task.REGRESSION:
        return keras.losses.MeanSquaredError()
    spec = _spec(model, task)
    if spec.binary:
        return _binary_loss(spec)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=spec.from_logits)


def _spec(model, task: Task = Task.CLASSIFICATION):
    """The TaskSpec of a classifier being tuned, read off its last layer (through a pruning wrapper)."""
    from deploykit.core.task import layer_kind, resolve_task
    from deploykit.core.taskspec import spec_of

    return spec_of(resolve_task(layer_kind(model), int(model.output_shape[-1]), task=task)[1])


def _binary_loss(spec):
    """Cross-entropy of a binary head's two-class log-probabilities against int labels [N] or [N, 1]."""
    from deploykit.backend import tf

    def binary_crossentropy(y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        return -tf.gather(spec.tf_log_probabilities(y_pred), labels, axis=1, batch_dims=1)

    return binary_crossentropy


@dataclass
class TuneResult:
    epochs_run: int
    best_epoch: int | None  # 1-based; None if no epoch was eligible
    held_rows: int = 0  # training rows early stopping was on (deploykit.sparsity.holdout); 0: the validation rows


@dataclass(frozen=True)
class Teacher:
    """A teacher model's outputs on the training and validation inputs: probabilities, or a regressor's predictions.

    Computed once per teacher (:func:`teacher_of`) and reused by every fine-tuning run that distils
    from it (each try of a sparsity search).
    """

    train: np.ndarray
    val: np.ndarray


def teacher_of(model, data) -> Teacher:
    """The outputs of ``model`` on ``data``'s training and validation inputs: probabilities (softmax of logits),
    or predictions."""
    from deploykit.core.evaluate import outputs

    spec = None if data.task is Task.REGRESSION else _spec(model)

    def probs(x):
        out = outputs(model, x)
        return (out if spec is None else spec.probabilities(out)).astype(np.float32)

    return Teacher(probs(data.x_train), probs(data.x_val))


def _soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the teacher's distribution at temperature T."""
    z = np.log(np.clip(probs, 1e-7, 1.0)) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def distillation_loss(from_logits, temperature: float, alpha: float):
    """Per-example ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(label)``.

    ``y_true`` packs the label in column 0 and the teacher's softened probabilities after it
    (Keras hands a loss one target tensor). T^2 keeps the soft term's gradients on the scale of the
    hard term's whatever the temperature (Hinton et al. 2015). ``from_logits``: a bool (softmax or logits
    output), or the student's :class:`~deploykit.core.taskspec.TaskSpec` (a binary head distils its two-class
    probabilities).
    """
    from deploykit.backend import keras, tf

    spec = from_logits if hasattr(from_logits, "tf_log_probabilities") else None

    def loss(y_true, y_pred):
        labels = tf.cast(y_true[:, 0], tf.int32)
        soft = y_true[:, 1:]
        if spec is not None and spec.binary:
            log_p = spec.tf_log_probabilities(y_pred)
            z, hard = log_p, -tf.gather(log_p, labels, axis=1, batch_dims=1)
        else:
            logits = bool(spec.from_logits if spec is not None else from_logits)
            z = y_pred if logits else tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0))
            hard = keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=logits)
        log_q = tf.nn.log_softmax(z / temperature, axis=-1)
        kl = tf.reduce_sum(soft * (tf.math.log(tf.clip_by_value(soft, 1e-7, 1.0)) - log_q), axis=-1)
        return alpha * temperature**2 * kl + (1.0 - alpha) * hard

    return loss


def _accuracy_metric(spec, packed: bool):
    """Accuracy as the spec predicts classes, on plain labels or column 0 of a packed distillation target
    (named ``accuracy``: the logs keep their usual keys)."""
    from deploykit.backend import keras, tf

    def accuracy(y_true, y_pred):
        labels = y_true[:, 0] if packed else tf.reshape(y_true, [-1])
        predicted = tf.argmax(spec.tf_log_probabilities(y_pred), axis=-1)
        return tf.cast(tf.equal(tf.cast(labels, tf.int64), predicted), tf.float32)

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def _targets(data, config, teacher: Teacher | None, spec=None):
    """(loss, metric, y_train, y_val): plain labels, or labels packed with the teacher's soft targets.

    A regressor distils by MSE to ``alpha * teacher + (1 - alpha) * target``: the same minimum as
    ``alpha * MSE(teacher) + (1 - alpha) * MSE(target)`` (they differ by a constant), with the plain MSE loss.
    """
    if data.task is Task.REGRESSION:
        width = lambda y: y.reshape(len(y), -1).astype(np.float32)  # noqa: E731  ([N] targets against [N, 1] outputs)
        y_train, y_val = width(data.y_train), width(data.y_val)
        if config.distill and teacher is not None:
            y_train = config.alpha * teacher.train + (1 - config.alpha) * y_train
            y_val = config.alpha * teacher.val + (1 - config.alpha) * y_val
        return None, "mse", y_train, y_val
    if not (config.distill and teacher is not None):
        plain = _accuracy_metric(spec, packed=False) if spec is not None and spec.binary else "accuracy"
        return None, plain, data.y_train, data.y_val
    pack = lambda y, p: np.concatenate([y.reshape(-1, 1).astype(np.float32), _soften(p, config.temperature)], axis=1)  # noqa: E731
    return (
        "distill",
        _accuracy_metric(spec, packed=True),
        pack(data.y_train, teacher.train),
        pack(data.y_val, teacher.val),
    )


def fine_tune(
    model,
    data,
    config,
    *,
    callbacks: tuple = (),
    eligible: Callable[[], bool] = lambda: True,
    status: Callable[[], str] | None = None,
    progress: Callable[[str], None] | None = None,
    teacher: Teacher | None = None,
) -> TuneResult:
    """Fine-tune ``model`` in place with Nadam; keep the best eligible epoch (lowest val_loss).

    With ``config.tune_holdout`` > 0, val_loss is on that share of the training rows, held out of the training (the
    validation rows are left for the run's decisions; too small a training split: on them, as
    :mod:`deploykit.sparsity.holdout` says); with 0 (the default), on the validation rows.
    Early stopping and the choice of the best epoch only consider epochs for
    which ``eligible()`` is true (for pruning: once the schedule has ended, so
    restoring never brings back weights below the target sparsity). With
    ``config.distill`` and a ``teacher``, the loss is :func:`distillation_loss`.
    """
    from deploykit.backend import keras, set_seed

    set_seed(config.seed)
    spec = None if data.task is Task.REGRESSION else _spec(model, data.task)
    kind, metric, y_train, y_val = _targets(data, config, teacher, spec)
    x_fit, y_fit, stop_on, held = _stopping_rows(data, config, y_train, y_val, progress)
    loss = loss_for(model, data.task) if kind is None else distillation_loss(spec, config.temperature, config.alpha)
    model.compile(optimizer=keras.optimizers.Nadam(config.learning_rate), loss=loss, metrics=[metric])
    best, lines = _callbacks(config, eligible, status, progress)
    bar = _bar("fine-tuning", config.epochs, -(-len(x_fit) // config.batch_size))
    history = model.fit(
        x_fit,
        y_fit,
        validation_data=stop_on,
        epochs=config.epochs,
        batch_size=config.batch_size,
        verbose=0,
        callbacks=[*callbacks, best, lines, *([bar] if bar else [])],
    )
    return TuneResult(len(history.epoch), best.best_epoch, held)


def _stopping_rows(data, config, y_train, y_val, progress=None):
    """(x, y trained on, (x, y) early stopping is on, held-out rows): a holdout of the training rows, so the
    validation rows stay unseen by the choice of epoch (deploykit.sparsity.holdout); the validation rows with
    ``tune_holdout`` 0 or a training split too small for one (held-out rows 0). ``y_*``: the fit targets (packed
    with a teacher's)."""
    from deploykit.sparsity.holdout import split_holdout

    rows = split_holdout(data.y_train, config.tune_holdout, config.seed, stratify=data.task is not Task.REGRESSION)
    if rows is None:
        if config.tune_holdout > 0 and progress is not None:
            progress(
                f"early stopping on the validation rows: {len(data.x_train)} training rows are too few to hold out"
            )
        return data.x_train, y_train, (data.x_val, y_val), 0
    fit, held = rows.fit, rows.held
    return data.x_train[fit], y_train[fit], (data.x_train[held], y_train[held]), len(held)


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
                self.best_loss, self.best_epoch, self.best_weights, self.wait = (
                    loss,
                    epoch + 1,
                    self.model.get_weights(),
                    0,
                )
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


def _bar(desc: str, epochs: int, steps: int):
    """A Keras callback advancing a :func:`deploykit.progress.task` per batch (a bar on a terminal, the heartbeat's
    figures elsewhere); None when nothing is drawn (the API)."""
    from deploykit import progress as live

    if not live.enabled():
        return None
    from deploykit.backend import keras

    class Bar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.task = live.task(desc, epochs * max(1, steps), "batches")

        def on_train_batch_end(self, batch, logs=None):
            self.task.update()

        def on_train_end(self, logs=None):
            self.task.close()

    return Bar()
