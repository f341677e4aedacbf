"""prune on convolutions: Conv2D, DepthwiseConv2D and SeparableConv2D (its pointwise kernel) reach their targets.

The zeros are counted on the kernel TF-MOT prunes (the layer table's ``pruned_kernel``), and survive
saving, loading and ONNX export.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from deploykit.errors import ConfigError

TARGET = 0.7
CONVS = ("conv", "depthwise", "separable")


def image_digits(digits):
    """The digits data as 8x8x1 images."""
    from deploykit.data.dataset import Dataset

    image = lambda x: x.reshape(len(x), 8, 8, 1)  # noqa: E731
    return Dataset(
        f"{digits.name}_images",
        image(digits.x_train),
        digits.y_train,
        image(digits.x_val),
        digits.y_val,
        image(digits.x_test),
        digits.y_test,
        digits.class_names,
    )


def conv_net(seed: int = 0):
    """Conv2D -> DepthwiseConv2D (multiplier 2) -> SeparableConv2D -> GlobalAveragePooling2D -> Dense softmax."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
            L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu", name="depthwise"),
            L.SeparableConv2D(12, 3, padding="same", activation="relu", name="separable"),
            L.GlobalAveragePooling2D(),
            L.Dense(10, activation="softmax", name="out"),
        ],
        name="conv_net",
    )


def _pruned(model, name):
    from deploykit.sparsity.report import pruned_kernel

    return pruned_kernel(model.get_layer(name))


@pytest.fixture(scope="module")
def pruned(digits):
    from deploykit.sparsity import prune

    data = image_digits(digits)
    model = conv_net()
    result, report = prune(model, data, TARGET, epochs=2)
    return model, result, report, data


@pytest.mark.slow
def test_each_conv_kernel_reaches_its_target(pruned):
    model, result, report, _ = pruned
    assert [(l.name, l.changed, l.target) for l in report.layers] == [
        *((name, True, TARGET) for name in CONVS),
        ("out", False, None),
    ]
    for layer in report.layers:
        kernel = _pruned(result, layer.name)
        assert layer.weights == kernel.size and layer.zeros == int(np.count_nonzero(kernel == 0))
        if layer.changed:
            assert abs(layer.sparsity - TARGET) <= 0.01, layer
    assert report.layers[1].weights == 3 * 3 * 8 * 2  # the depthwise kernel
    assert report.layers[2].weights == 16 * 12  # the separable layer's pointwise kernel, not its depthwise one
    depthwise_of_separable = result.get_layer("separable").get_weights()[0]
    assert np.mean(depthwise_of_separable == 0) < 0.05  # TF-MOT leaves it dense


@pytest.mark.slow
def test_zeros_survive_save_load_and_onnx_export(pruned, tmp_path):
    from onnx import numpy_helper

    from deploykit.export.convert import keras_to_onnx
    from deploykit.io.models import load_model, save_model

    _, result, _, data = pruned
    assert {type(l).__name__ for l in result.layers} == {
        "Conv2D",
        "DepthwiseConv2D",
        "SeparableConv2D",
        "GlobalAveragePooling2D",
        "Dense",
    }
    path = save_model(result, tmp_path / "pruned.keras")
    with zipfile.ZipFile(path) as z:
        config = z.read("config.json").decode()
    assert "PruneLowMagnitude" not in config and "Prunable" not in config
    loaded = load_model(path)
    for name in CONVS:
        np.testing.assert_array_equal(_pruned(loaded, name), _pruned(result, name))
    np.testing.assert_allclose(
        np.asarray(loaded(data.x_test[:32], training=False)),
        np.asarray(result(data.x_test[:32], training=False)),
        atol=1e-6,
    )

    proto = keras_to_onnx(result)
    zeros = sorted(int(np.count_nonzero(numpy_helper.to_array(i) == 0)) for i in proto.graph.initializer)
    for name in CONVS:  # the converter may transpose or reshape a kernel, never change its zeros
        kernel = _pruned(result, name)
        assert int(np.count_nonzero(kernel == 0)) in zeros, name


def test_block_sparsity_on_a_conv_kernel_is_one_clear_error(digits):
    from deploykit.sparsity import prune

    with pytest.raises(ConfigError, match="block_size 2x2 applies to Dense kernels only.*'conv' has a 4-D kernel"):
        prune(conv_net(), image_digits(digits), 0.5, epochs=1, block_size=(2, 2), skip_layers=("out",))


@pytest.mark.slow
def test_sensitivity_scan_and_l1_use_the_pruned_kernel(digits):
    from deploykit.core.evaluate import Budget, Metric
    from deploykit.sparsity import sparsify_l1
    from deploykit.sparsity.search import _sensitivity

    data, model = image_digits(digits), conv_net()
    before = [w.copy() for w in model.get_weights()]
    scan = _sensitivity(model, data, list(CONVS), Budget(Metric.ACCURACY, 0.01))
    assert [(s.name, s.weights) for s in scan] == [("conv", 72), ("depthwise", 144), ("separable", 192)]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    result, report = sparsify_l1(model, data, l1=1e-3, threshold=0.05, epochs=1)
    separable = result.get_layer("separable").get_weights()
    assert report.layers[2].zeros == int(np.count_nonzero(separable[1] == 0)) > 0  # pointwise kernel zeroed
    assert np.count_nonzero(separable[0] == 0) == 0  # the depthwise one is left alone
