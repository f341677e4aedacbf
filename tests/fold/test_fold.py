"""BatchNorm / Normalization folding: exact in tf_keras and in onnxruntime, for every placement."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests.helpers import build_dense, randomize_batchnorm

TOL = 1e-5
N = 1000


def _layers():
    from deploykit.backend import keras

    return keras.layers


def _seq(input_shape, *layers):
    from deploykit.backend import keras

    return keras.Sequential([keras.Input(shape=input_shape), *layers])


def _stats(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(3.0, 2.0, n).astype("float32"), rng.uniform(0.5, 4.0, n).astype("float32")


# Each builder returns an (untrained) model whose foldable layers all fold.
def backward_with_bias():
    L = _layers()
    return _seq((12,), L.Dense(16), L.BatchNormalization(), L.Activation("elu"), L.Dense(5, activation="softmax"))


def backward_without_bias():
    L = _layers()
    return _seq(
        (12,),
        L.Dense(16, use_bias=False),
        L.BatchNormalization(),
        L.Activation("elu"),
        L.Dense(5, activation="softmax"),
    )


def forward_through_dropout():
    L = _layers()
    return _seq(
        (12,), L.Dense(16, activation="elu"), L.BatchNormalization(), L.Dropout(0.3), L.Dense(5, activation="softmax")
    )


def first_after_input():
    L = _layers()
    return _seq(
        (12,), L.BatchNormalization(epsilon=0.05), L.Dense(16, activation="relu"), L.Dense(5, activation="softmax")
    )


def first_before_flatten():
    L = _layers()  # 2-D input: the BN's statistics are per last axis, spread over the flattened features
    return _seq(
        (4, 6), L.BatchNormalization(), L.Flatten(), L.Dense(8, activation="elu"), L.Dense(5, activation="softmax")
    )


def multi_axis_bn_before_flatten():
    L = _layers()  # per-element statistics over both axes of a 2-D input
    return _seq(
        (4, 6),
        L.BatchNormalization(axis=[1, 2]),
        L.Flatten(),
        L.Dense(8, activation="elu"),
        L.Dense(5, activation="softmax"),
    )


def first_after_flatten():
    L = _layers()
    return _seq(
        (4, 6), L.Flatten(), L.BatchNormalization(), L.Dense(8, activation="elu"), L.Dense(5, activation="softmax")
    )


def dense_on_last_axis():
    L = _layers()  # Dense acting on the last axis of a (4, 6) input: per-last-axis stats fold
    return _seq(
        (4, 6), L.BatchNormalization(), L.Dense(8, activation="elu"), L.Flatten(), L.Dense(5, activation="softmax")
    )


def normalization_from_config():
    L = _layers()
    mean, var = _stats(12, 1)
    return _seq(
        (12,), L.Normalization(mean=mean, variance=var), L.Dense(16, activation="elu"), L.Dense(5, activation="softmax")
    )


def normalization_adapted():
    L = _layers()
    norm = L.Normalization()
    norm.adapt(np.random.default_rng(2).normal(5.0, 3.0, (200, 12)).astype("float32"))
    return _seq((12,), norm, L.Dense(16, activation="elu"), L.Dense(5, activation="softmax"))


def normalization_then_bn():
    L = _layers()
    mean, var = _stats(12, 3)
    return _seq(
        (12,),
        L.Normalization(mean=mean, variance=var),
        L.BatchNormalization(),
        L.Dense(16, activation="elu"),
        L.BatchNormalization(),
        L.Dropout(0.2),
        L.Dense(5, activation="softmax"),
    )


def normalization_of_2d_input():
    L = _layers()  # per-pixel standardization of a 2-D input, then Flatten
    mean, var = _stats(24, 4)
    return _seq(
        (4, 6),
        L.Normalization(axis=(1, 2), mean=mean.reshape(4, 6), variance=var.reshape(4, 6)),
        L.Flatten(),
        L.Dense(8, activation="elu"),
        L.Dense(5, activation="softmax"),
    )


def alpha_dropout_and_reshape():
    L = _layers()
    return _seq(
        (12,),
        L.Dense(16, activation="selu"),
        L.BatchNormalization(),
        L.AlphaDropout(0.1),
        L.Reshape((4, 4)),
        L.Flatten(),
        L.Dense(5, activation="softmax"),
    )


def center_scale_off():
    L = _layers()
    return _seq(
        (12,),
        L.Dense(16, activation="elu"),
        L.BatchNormalization(center=False, epsilon=1e-2),
        L.Dense(16, activation="elu"),
        L.BatchNormalization(scale=False, epsilon=0.3),
        L.Dense(5, activation="softmax"),
    )


def stacked_bns():
    L = _layers()
    return _seq(
        (12,),
        L.Dense(16),
        L.BatchNormalization(),
        L.BatchNormalization(epsilon=0.1),
        L.Activation("elu"),
        L.Dense(5, activation="softmax"),
    )


def chapter_bn_after_activation():
    L = _layers()  # Hands-On ML ch. 11, first BatchNorm model
    return _seq(
        (28, 28),
        L.Flatten(),
        L.BatchNormalization(),
        L.Dense(300, activation="elu", kernel_initializer="he_normal"),
        L.BatchNormalization(),
        L.Dense(100, activation="elu", kernel_initializer="he_normal"),
        L.BatchNormalization(),
        L.Dense(10, activation="softmax"),
    )


def chapter_bn_before_activation():
    L = _layers()  # Hands-On ML ch. 11, BN before the activation, use_bias=False
    return _seq(
        (28, 28),
        L.Flatten(),
        L.BatchNormalization(),
        L.Dense(300, kernel_initializer="he_normal", use_bias=False),
        L.BatchNormalization(),
        L.Activation("elu"),
        L.Dense(100, kernel_initializer="he_normal", use_bias=False),
        L.BatchNormalization(),
        L.Activation("elu"),
        L.Dense(10, activation="softmax"),
    )


FOLDABLE = [
    backward_with_bias,
    backward_without_bias,
    forward_through_dropout,
    first_after_input,
    first_before_flatten,
    multi_axis_bn_before_flatten,
    first_after_flatten,
    dense_on_last_axis,
    normalization_from_config,
    normalization_adapted,
    normalization_then_bn,
    normalization_of_2d_input,
    alpha_dropout_and_reshape,
    center_scale_off,
    stacked_bns,
    chapter_bn_after_activation,
    chapter_bn_before_activation,
]


def _inputs(model, seed=7):
    """Raw-scale inputs: far from the BN statistics' centre, so a wrong shift would show."""
    x = np.random.default_rng(seed).normal(3.0, 2.0, (N, *model.input_shape[1:]))
    return x.astype("float32")


def _onnx_outputs(model, x):
    import onnxruntime as ort

    from deploykit.export.convert import keras_to_onnx

    session = ort.InferenceSession(keras_to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _foldable_kinds(model):
    return [type(l).__name__ for l in model.layers if type(l).__name__ in ("BatchNormalization", "Normalization")]


@functools.cache
def _folded(builder, seed=0):
    """(model, folded, report) of one builder, once per process: the tests that ask for the same one only read them."""
    model = builder()
    randomize_batchnorm(model, seed)
    from deploykit.fold import fold_batchnorm

    folded, report = fold_batchnorm(model)
    return model, folded, report


@pytest.mark.parametrize("builder", FOLDABLE, ids=lambda b: b.__name__)
def test_every_placement_folds_exactly_in_keras_and_onnx(builder):
    model, folded, report = _folded(builder)
    x = _inputs(model)
    expected = model(x, training=False).numpy()
    assert _foldable_kinds(folded) == []
    assert report.changed and not report.unfolded
    assert len(report.folded) == len(_foldable_kinds(model))
    assert report.params_after <= report.params_before == model.count_params()
    assert report.params_after == folded.count_params()
    assert report.max_abs_diff <= TOL
    assert np.abs(folded(x, training=False).numpy() - expected).max() <= TOL
    assert np.abs(_onnx_outputs(folded, x) - expected).max() <= TOL


def test_placements_and_targets_are_reported():
    from deploykit.fold import Placement

    _, folded, report = _folded(chapter_bn_before_activation)
    rows = [(f.placement, f.target) for f in report.folded]
    dense = [l.name for l in folded.layers if type(l).__name__ == "Dense"]
    assert rows == [(Placement.FORWARD, dense[0]), (Placement.BACKWARD, dense[0]), (Placement.BACKWARD, dense[1])]
    first = report.folded[1]
    assert (first.params, first.target_params_before, first.target_params_after) == (
        4 * 300,
        784 * 300,
        784 * 300 + 300,
    )
    assert all(l.get_config()["use_bias"] for l in folded.layers if l.name in dense)  # use_bias=False Dense got a bias
    as_dict = report.to_dict()
    assert as_dict["changed"] is True and as_dict["folded"][1]["placement"] == "backward"


def test_forward_fold_records_what_it_passed_through():
    _, _, report = _folded(alpha_dropout_and_reshape)
    (only,) = report.folded
    assert len(only.through) == 3  # AlphaDropout, Reshape, Flatten


def test_mc_safe_fold_keeps_batchnorm_before_dropout_and_stays_exact():
    from deploykit.fold import fold_batchnorm

    model = forward_through_dropout()
    randomize_batchnorm(model, seed=3)
    kept, report = fold_batchnorm(model, through_dropout=False)
    assert [l.kind for l in report.unfolded] == ["BatchNormalization"]
    assert "MC Dropout" in report.unfolded[0].reason
    assert [type(l).__name__ for l in kept.layers].count("BatchNormalization") == 1
    x = np.random.default_rng(1).standard_normal((N, 12)).astype("float32")
    assert np.abs(np.asarray(model(x)) - np.asarray(kept(x))).max() <= TOL


def test_uses_each_layers_own_epsilon():
    """Same statistics, different epsilons: the folded weights differ exactly as each epsilon says."""
    from deploykit.fold import fold_batchnorm

    L = _layers()
    var = np.full(4, 0.01, "float32")
    kernels = []
    for eps in (1e-3, 0.5):
        bn = L.BatchNormalization(epsilon=eps)
        model = _seq((4,), bn, L.Dense(1, use_bias=False, kernel_initializer="ones"))
        bn.set_weights([np.ones(4, "float32"), np.zeros(4, "float32"), np.zeros(4, "float32"), var])
        kernels.append(fold_batchnorm(model)[0].layers[0].get_weights()[0][:, 0])
    np.testing.assert_allclose(kernels[0], 1 / np.sqrt(0.01 + 1e-3), rtol=1e-6)
    np.testing.assert_allclose(kernels[1], 1 / np.sqrt(0.01 + 0.5), rtol=1e-6)


def test_normalization_clamps_std_at_keras_epsilon():
    """A constant feature (variance 0) is divided by keras epsilon, as tf_keras does, not by 0."""
    from deploykit.backend import keras
    from deploykit.fold import fold_batchnorm

    L = _layers()
    mean = np.array([0.0, 2.0, 3.0], "float32")
    var = np.array([0.0, 1.0, 4.0], "float32")
    model = _seq((3,), L.Normalization(mean=mean, variance=var), L.Dense(2, kernel_initializer="ones"))
    folded, report = fold_batchnorm(model)
    assert report.folded[0].max_scale == pytest.approx(1 / keras.backend.epsilon())
    kernel = folded.layers[0].get_weights()[0][:, 0]
    np.testing.assert_allclose(kernel, [1 / keras.backend.epsilon(), 1.0, 0.5], rtol=1e-6)
    x = np.random.default_rng(0).normal(2.0, 2.0, (50, 3)).astype("float32")
    x[:, 0] = 0.0  # a constant feature's only value
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), atol=TOL)


def test_near_constant_feature_far_from_zero_is_not_folded():
    """Folding would add terms ~1e7 that cancel: the Normalization stays and the report says why."""
    from deploykit.fold import fold_batchnorm

    L = _layers()
    model = _seq((3,), L.Normalization(mean=[5.0, 2.0, 3.0], variance=[0.0, 1.0, 4.0]), L.Dense(2))
    folded, report = fold_batchnorm(model)
    assert not report.changed
    (stays,) = report.unfolded
    assert stays.kind == "Normalization" and "feature 0" in stays.reason and "precision" in stays.reason
    assert _foldable_kinds(folded) == ["Normalization"]


def test_unfoldable_layers_stay_and_say_why():
    from deploykit.fold import fold_batchnorm

    L = _layers()
    model = _seq(
        (4, 6),
        L.BatchNormalization(axis=1),  # per-row stats, but the Dense acts on the last axis
        L.Dense(8, activation="elu"),
        L.BatchNormalization(),
        L.Activation("relu"),  # non-linear before Dense
        L.Flatten(),
        L.Dense(16, activation="elu"),
        L.BatchNormalization(),
        L.Dropout(0.1),  # folds forward
        L.Dense(5, activation="softmax"),
        L.BatchNormalization(),
    )  # last layer
    randomize_batchnorm(model, 3)
    folded, report = fold_batchnorm(model)
    reasons = {u.name: u.reason for u in report.unfolded}
    bn = [l.name for l in model.layers if type(l).__name__ == "BatchNormalization"]
    assert list(reasons) == [bn[0], bn[1], bn[3]]
    assert "other than the last" in reasons[bn[0]]
    assert "Activation" in reasons[bn[1]] and "not linear" in reasons[bn[1]]
    assert reasons[bn[3]] == "no Dense follows it"
    assert [f.name for f in report.folded] == [bn[2]]
    assert _foldable_kinds(folded) == ["BatchNormalization"] * 3
    x = _inputs(model)
    assert np.abs(folded(x, training=False).numpy() - model(x, training=False).numpy()).max() <= TOL
    assert "not folded:" in report.table() and "no Dense follows it" in report.table()


def test_nothing_to_fold_returns_an_equal_fresh_copy():
    from deploykit.fold import fold_batchnorm

    model = build_dense(12, (16,), 5, bn=False, selu=True)
    folded, report = fold_batchnorm(model)
    assert folded is not model
    assert not report.changed and report.folded == [] and report.unfolded == []
    assert report.params_before == report.params_after
    assert report.max_abs_diff == 0.0
    for a, b in zip(model.get_weights(), folded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert "nothing folded" in report.table()


def test_input_model_is_not_mutated(digits):
    from deploykit.fold import fold_batchnorm

    model = build_dense(data=digits)
    randomize_batchnorm(model, 5)
    before = [w.copy() for w in model.get_weights()]
    names = [l.name for l in model.layers]
    folded, report = fold_batchnorm(model)
    assert [l.name for l in model.layers] == names
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert "raw scale" in report.probe
    # the folded model takes raw inputs: no preprocessing op left
    assert _foldable_kinds(folded) == []
    x = digits.x_test
    assert np.abs(folded(x, training=False).numpy() - model(x, training=False).numpy()).max() <= TOL


@pytest.fixture(scope="module")
def folded_digits(digits):
    from deploykit.fold import fold_batchnorm

    model = build_dense(data=digits)
    randomize_batchnorm(model, 6)
    return model, fold_batchnorm(model)[0]


def test_folded_model_saves_loads_and_trains(folded_digits, digits, tmp_path):
    from deploykit.backend import keras
    from deploykit.io.models import load_model, save_model

    model, folded = folded_digits
    path = save_model(folded, tmp_path / "folded.keras")
    loaded = load_model(path)
    x = digits.x_test
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), folded(x, training=False).numpy())
    before = [w.copy() for w in loaded.get_weights()]
    loaded.compile(optimizer=keras.optimizers.SGD(1e-2), loss="sparse_categorical_crossentropy")
    history = loaded.fit(digits.x_train[:256], digits.y_train[:256], epochs=1, batch_size=64, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, loaded.get_weights()))


@pytest.mark.slow  # prunes with TF-MOT while fine-tuning
def test_folded_model_goes_through_tfmot_pruning(folded_digits, digits):
    import tensorflow_model_optimization as tfmot

    from deploykit.backend import keras

    _, shared = folded_digits
    folded = keras.models.clone_model(shared)  # the wrapper trains the layers it wraps: keep the fixture intact
    folded.set_weights(shared.get_weights())
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)

    def wrap(layer):
        if type(layer).__name__ == "Dense":
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer.__class__.from_config(layer.get_config())

    pruned = keras.models.clone_model(folded, clone_function=wrap)
    pruned.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    pruned.fit(
        digits.x_train[:128],
        digits.y_train[:128],
        epochs=1,
        batch_size=64,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    kernel = [l for l in stripped.layers if type(l).__name__ == "Dense"][0].get_weights()[0]
    assert 0.45 <= float(np.mean(kernel == 0)) <= 0.55


def test_folded_model_exports_to_onnx_with_the_same_outputs(folded_digits, digits):
    model, folded = folded_digits
    x = digits.x_test
    assert np.abs(_onnx_outputs(folded, x) - model(x, training=False).numpy()).max() <= TOL


def test_python_api_bad_input_raises_deploykit_errors():
    from deploykit.errors import UnsafeModelError, UsageError
    from deploykit.fold import fold_batchnorm

    with pytest.raises(UsageError, match="tf_keras model"):
        fold_batchnorm("model.keras")
    L = _layers()
    with pytest.raises(UnsafeModelError, match="'double'.*Lambda"):
        fold_batchnorm(_seq((6, 2), L.Lambda(lambda t: t * 2.0, name="double"), L.Flatten(), L.Dense(3)))


def test_cli_folds_and_prints_the_table(tmp_path, cli):
    from deploykit.io.models import load_model, save_model

    model = chapter_bn_before_activation()
    randomize_batchnorm(model, 8)
    src = save_model(model, tmp_path / "in.keras")
    out = tmp_path / "out" / "folded.keras"
    run = cli("fold", src, "--out", out)
    assert run.returncode == 0, run.stderr
    assert "folded 3 layer(s)" in run.stdout and "backward" in run.stdout and "forward" in run.stdout
    x = _inputs(model)
    assert np.abs(load_model(out)(x, training=False).numpy() - model(x, training=False).numpy()).max() <= TOL


@pytest.mark.parametrize("case", ["not_a_model", "unsafe_layer"])
def test_cli_bad_input_one_error_nothing_written(case, tmp_path, cli):
    from deploykit.backend import keras

    if case == "not_a_model":
        src = tmp_path / "model.keras"
        src.write_text("this is not a model")
    else:
        src = tmp_path / "lambda.keras"
        keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Lambda(lambda t: t * 2.0),
                keras.layers.Flatten(),
                keras.layers.Dense(3),
            ]
        ).save(src)
    out = tmp_path / "folded.keras"
    run = cli("fold", src, "--out", out)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("deploykit fold: error:") and "Traceback" not in run.stderr
    assert (src.name if case == "not_a_model" else "of type Lambda") in lines[-1]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [src.name]
