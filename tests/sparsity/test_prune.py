"""prune: TF-MOT magnitude pruning reaches its targets, and the zeros survive saving and export."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from deploykit.errors import ConfigError, DataError, StepError
from deploykit.sparsity.report import PruneSchedule

TARGET = 0.8


@pytest.fixture(scope="module")
def pruned(trained_model, digits):
    from deploykit.sparsity import prune

    before = [w.copy() for w in trained_model.get_weights()]
    lines: list[str] = []
    model, report = prune(trained_model, digits, TARGET, epochs=4, progress=lines.append)
    return model, report, lines, before


def _kernels(model):
    return {l.name: l.get_weights()[0] for l in model.layers if type(l).__name__ == "Dense"}


def test_each_pruned_layer_reaches_its_target(pruned):
    model, report, _, _ = pruned
    kernels = _kernels(model)
    output = list(kernels)[-1]
    for name, kernel in kernels.items():
        reached = float(np.mean(kernel == 0))
        if name == output:  # skipped by default
            assert reached < 0.05
        else:
            assert abs(reached - TARGET) <= 0.01, (name, reached)
    assert [(l.name, l.changed, l.target) for l in report.layers] == [
        (name, name != output, None if name == output else TARGET) for name in kernels
    ]
    assert all(l.zeros == int(np.count_nonzero(kernels[l.name] == 0)) for l in report.layers)
    assert report.sparsity == pytest.approx(sum(l.zeros for l in report.layers) / sum(l.weights for l in report.layers))


def test_report_schedule_progress_and_input_untouched(pruned, trained_model):
    model, report, lines, before = pruned
    assert all(np.array_equal(a, b) for a, b in zip(before, trained_model.get_weights()))
    sched = report.schedule
    assert sched.end_step % sched.frequency == 0 and 0 < sched.end_step <= sched.total_steps
    assert sched.frequency < 100  # TF-MOT's default would never fire in this short run
    assert len(lines) == report.epochs_run and lines[0].startswith("epoch 1/4") and "sparsity" in lines[0]
    assert report.best_epoch is not None and report.best_epoch * sched.steps_per_epoch >= sched.end_step
    assert 0.5 < report.accuracy_after <= 1 and report.accuracy_before > 0.9
    assert report.gzip_bytes_after < report.gzip_bytes_before
    assert json.loads(json.dumps(report.to_dict()))["schedule"]["end_step"] == sched.end_step


def test_no_pruning_wrapper_reaches_a_saved_file(pruned, tmp_path):
    from deploykit.io.models import load_model, save_model

    model, _, _, _ = pruned
    assert {type(l).__name__ for l in model.layers} <= {"Normalization", "Dense", "BatchNormalization", "Dropout"}
    path = save_model(model, tmp_path / "pruned.keras")
    with zipfile.ZipFile(path) as z:
        assert "PruneLowMagnitude" not in z.read("config.json").decode()
    loaded = load_model(path)
    for name, kernel in _kernels(model).items():
        np.testing.assert_array_equal(loaded.get_layer(name).get_weights()[0], kernel)


def test_zeros_survive_onnx_export(pruned):
    from onnx import numpy_helper

    from deploykit.export.convert import keras_to_onnx

    model, _, _, _ = pruned
    proto = keras_to_onnx(model)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    matmul_weights = [
        inits[n.input[1]] for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits
    ]
    for name, kernel in list(_kernels(model).items())[:-1]:
        found = [w for w in matmul_weights if w.shape == kernel.shape]
        assert found, f"no MatMul weight of shape {kernel.shape} for {name}"
        assert int(np.count_nonzero(kernel == 0)) in [int(np.count_nonzero(w == 0)) for w in found]


def test_zeros_survive_tflite_export(pruned):
    from ai_edge_litert.interpreter import Interpreter

    from deploykit.backend import tf

    model, _, _, _ = pruned
    flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interp = Interpreter(model_content=flat)
    interp.allocate_tensors()
    zeros_by_shape: dict[tuple, list[int]] = {}
    for t in interp.get_tensor_details():
        try:
            value = interp.get_tensor(t["index"])
        except ValueError:
            continue
        zeros_by_shape.setdefault(tuple(value.shape), []).append(int(np.count_nonzero(value == 0)))
    for name, kernel in list(_kernels(model).items())[:-1]:
        # FullyConnected stores the kernel transposed: (units, inputs)
        assert int(np.count_nonzero(kernel == 0)) in zeros_by_shape.get(kernel.T.shape, []), name


def test_zeros_survive_batchnorm_folding_and_compact(pruned, digits):
    fold = pytest.importorskip("deploykit.fold")
    from deploykit.sparsity import compact

    model, _, _, _ = pruned
    folded, _ = fold.fold_batchnorm(model)
    for name, kernel in list(_kernels(model).items())[:-1]:
        np.testing.assert_array_equal(folded.get_layer(name).get_weights()[0] == 0, kernel == 0)
    small, report = compact(folded, digits)  # BN folded: Dense -> Dropout -> Dense
    assert report.max_abs_diff <= 1e-5


@pytest.mark.slow
def test_block_sparsity_and_compact_on_a_pruned_model(digits):
    """16x1 blocks leave whole columns empty: compact removes those neurons exactly."""
    from deploykit.backend import keras
    from deploykit.core.chain import LayerSpec, from_chain, to_chain
    from deploykit.sparsity import compact, prune
    from tests.helpers import build_dense

    model = build_dense(bn=False, dropout=0, data=digits)
    pruned, report = prune(model, digits, 0.75, epochs=2, block_size=(16, 1))
    kernels = list(_kernels(pruned).values())
    for kernel in kernels[:-1]:
        blocks = kernel.reshape(-1, 16, kernel.shape[1]).transpose(0, 2, 1).reshape(-1, 16)
        assert set(np.count_nonzero(blocks, axis=1)) <= {0, 16}
        assert abs(np.mean(kernel == 0) - 0.75) <= 0.01
    dead = ~kernels[0].any(axis=0)
    assert dead.sum() >= 2  # the case is not empty

    small, creport = compact(pruned, digits)
    assert creport.max_abs_diff <= 1e-5
    assert creport.macs_after < creport.macs_before
    assert creport.layers[0].neurons_after <= 32 - dead.sum()
    hidden = [l.get_weights()[0] for l in small.layers if type(l).__name__ == "Dense"]
    for k_in, k_out in zip(hidden, hidden[1:]):  # fixed point: no dead neuron is left
        assert k_in.any(axis=0).all() and k_out.any(axis=1).all()

    # The same weights with a Dropout after the first Dense: a constant may only go if it is exactly 0.
    chain = to_chain(pruned)
    dense_at = [i for i, s in enumerate(chain.layers) if s.class_name == "Dense"]
    chain.layers.insert(dense_at[0] + 1, LayerSpec("Dropout", {"name": "drop", "rate": 0.3}))
    with_dropout = from_chain(chain)
    _, kept_report = compact(with_dropout, digits)
    constant = keras.activations.elu(pruned.get_layer(report.layers[0].name).get_weights()[1]).numpy()
    assert kept_report.max_abs_diff <= 1e-5
    assert kept_report.layers[0].constant_kept == int(np.count_nonzero(dead & (constant != 0)))


@pytest.mark.slow
def test_a_missed_target_is_an_error(digits):
    from deploykit.sparsity import prune
    from tests.helpers import build_dense

    model = build_dense(bn=False, dropout=0, data=digits)
    # 16x4 blocks: a 32x32 kernel has 16 of them, and 80% of 16 rounds to 13 = 81.25%
    with pytest.raises(StepError, match=r"reached 0\.812, target 0\.800"):
        prune(model, digits, 0.8, epochs=1, block_size=(16, 4))
    with pytest.raises(ConfigError, match="fewer than two blocks"):
        prune(model, digits, 0.8, epochs=1, block_size=(32, 1))


def test_schedule_is_derived_from_the_run():
    short = PruneSchedule.derive(samples=100, batch_size=32, epochs=2, end_fraction=0.7)
    assert (short.steps_per_epoch, short.total_steps, short.frequency, short.end_step) == (4, 8, 1, 6)
    long = PruneSchedule.derive(samples=50_000, batch_size=32, epochs=10, end_fraction=0.7)
    assert long.frequency == 1563 // 4 and long.end_step % long.frequency == 0
    assert 0.69 * long.total_steps <= long.end_step <= long.total_steps
    assert PruneSchedule.derive(10, 32, 1, 1.0).end_step == 1


def test_bad_input_is_one_clear_error(trained_model, digits):
    from deploykit.backend import keras
    from deploykit.sparsity import prune, sparsify_l1

    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="target_sparsity must be a number in"):
            prune(trained_model, digits, bad)
    no_dense = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Normalization(mean=0.0, variance=1.0)])
    with pytest.raises(StepError, match="has no Dense layer"):
        prune(no_dense, digits)
    small = keras.Sequential(
        [keras.Input(shape=(20,)), keras.layers.Dense(8), keras.layers.Dense(10, activation="softmax")]
    )
    with pytest.raises(DataError, match=r"inputs of shape \(64,\).*expects \(20,\)"):
        prune(small, digits)
    with pytest.raises(DataError, match=r"inputs of shape \(64,\).*expects \(20,\)"):
        sparsify_l1(small, digits)
    with pytest.raises(ConfigError, match="'nope' is not a Dense layer"):
        prune(trained_model, digits, layer_sparsity={"nope": 0.5})
    only_output = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(ConfigError, match="every prunable layer is skipped"):
        prune(only_output, digits)
    five = keras.Sequential(
        [keras.Input(shape=(64,)), keras.layers.Dense(8), keras.layers.Dense(5, activation="softmax")]
    )
    with pytest.raises(DataError, match="has 10 classes, but model .* outputs 5"):
        prune(five, digits)
