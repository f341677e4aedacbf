"""deploykit.core.layers: the support table answers for layer objects and serialized configs."""

from __future__ import annotations

import pytest

from deploykit.core.layers import PRUNABLE, SUPPORT, UNKNOWN, Absorb, Carry, Role, check_layers, layer_type, support_for
from deploykit.errors import UnsafeModelError


def test_every_table_entry_is_a_tf_keras_layer():
    from deploykit.backend import keras

    for name in SUPPORT:
        assert isinstance(getattr(keras.layers, name), type), name


def test_lookups_for_layer_objects():
    from deploykit.backend import keras

    dense = keras.layers.Dense(3, name="d1")
    assert layer_type(dense) == "Dense"
    entry = support_for(dense)
    assert entry.role is Role.DENSE and entry.prunable and not entry.folds_away
    assert support_for(keras.layers.BatchNormalization()).folds_away
    assert support_for(keras.layers.Normalization()).role is Role.NORMALIZATION
    drop = support_for(keras.layers.AlphaDropout(0.1))
    assert drop.role is Role.DROPOUT and drop.identity_at_inference
    assert support_for(keras.layers.PReLU()).role is Role.ACTIVATION


def test_lookups_for_configs():
    assert layer_type({"class_name": "LeakyReLU", "config": {}}) == "LeakyReLU"
    assert support_for({"class_name": "Flatten", "config": {"name": "f"}}).role is Role.RESHAPE
    assert PRUNABLE == {
        "Dense",
        "Conv1D",
        "Conv2D",
        "Convolution1D",
        "Convolution2D",
        "Conv2DTranspose",
        "Convolution2DTranspose",
        "DepthwiseConv2D",
        "SeparableConv2D",
        "SeparableConvolution2D",
        "LSTM",
        "GRU",
        "SimpleRNN",
    }  # TF-MOT's RNN cells


def test_per_op_entries_say_how_an_affine_is_absorbed_and_carried():
    assert SUPPORT["Conv2D"].absorbs is Absorb.BOTH and SUPPORT["DepthwiseConv2D"].absorbs is Absorb.OUTPUTS
    assert SUPPORT["AveragePooling2D"].carries is Carry.AVERAGE
    assert SUPPORT["GlobalMaxPooling2D"].carries is Carry.MAX_POSITIVE
    assert SUPPORT["Add"].merges and SUPPORT["Add"].carries is Carry.STOP
    assert SUPPORT["SpatialDropout2D"].sampled and SUPPORT["Dropout"].sampled
    assert SUPPORT["Rescaling"].folds_away
    assert SUPPORT["MaxPool2D"] is SUPPORT["MaxPooling2D"]


@pytest.mark.parametrize("layer", [{"class_name": "ConvLSTM1D", "config": {"name": "rnn_1"}}, "object"])
def test_a_keras_layer_outside_the_table_is_known_as_other(layer):
    if layer == "object":
        from deploykit.backend import keras

        layer = keras.layers.ConvLSTM1D(4, 3, name="rnn_1")
    assert support_for(layer) is UNKNOWN and UNKNOWN.role is Role.OTHER and not UNKNOWN.mc


def test_custom_classes_need_unsafe():
    keras3_custom = {
        "module": None,
        "class_name": "MyLayer",
        "registered_name": "Custom>MyLayer",
        "config": {"name": "mine"},
    }
    with pytest.raises(UnsafeModelError, match="'mine'.*custom code"):
        support_for(keras3_custom)
    with pytest.raises(UnsafeModelError, match="'mine'"):
        support_for({"class_name": "NotAKerasLayer", "config": {"name": "mine"}})
    assert support_for(keras3_custom, unsafe=True).role is Role.OPAQUE


def test_lambda_needs_unsafe_and_is_not_importable_from_keras3():
    lam = {"class_name": "Lambda", "config": {"name": "my_lambda"}}
    with pytest.raises(UnsafeModelError, match="my_lambda.*--unsafe"):
        support_for(lam)
    entry = support_for(lam, unsafe=True)
    assert entry.role is Role.OPAQUE and not entry.keras3_import
    assert [n for n, s in SUPPORT.items() if not s.keras3_import] == ["Lambda"]


def test_check_layers_checks_them_all():
    ok = [{"class_name": "Dense", "config": {"name": "a"}}, {"class_name": "Dropout", "config": {"name": "b"}}]
    assert [s.role for s in check_layers(ok)] == [Role.DENSE, Role.DROPOUT]
    with pytest.raises(UnsafeModelError, match="'c'"):
        check_layers([*ok, {"class_name": "Lambda", "config": {"name": "c"}}])


def test_every_entry_the_table_says_mc_can_emit_has_an_emitter_and_no_other():
    from deploykit.uncertainty.mc_layers import EMITTERS

    claimed = {name for name, entry in SUPPORT.items() if entry.mc}
    assert claimed == set(EMITTERS)


def test_each_kernel_is_named_with_its_layout_as_tf_mot_names_it():
    """The weight that makes the output units: its attribute, index in get_weights() and layout."""
    from deploykit.core.layers import KernelLayout

    def kernel(name):
        k = SUPPORT[name].kernel
        return (k.name, k.index, k.layout)

    assert kernel("Dense") == ("kernel", 0, KernelLayout.DENSE)
    assert kernel("Conv2D") == kernel("Convolution2D") == ("kernel", 0, KernelLayout.CONV)
    assert kernel("DepthwiseConv2D") == ("depthwise_kernel", 0, KernelLayout.DEPTHWISE)
    assert kernel("SeparableConv2D") == ("pointwise_kernel", 1, KernelLayout.CONV)
    assert kernel("LSTM") == ("kernel", 0, KernelLayout.RECURRENT)
    assert SUPPORT["SeparableConv2D"].pruned_kernel == ("pointwise_kernel", 1)
    assert not SUPPORT["SeparableConv2D"].kernel.reads_input and SUPPORT["Conv1D"].kernel.reads_input
    assert (
        SUPPORT["DepthwiseConv2D"].kernel.units((3, 3, 8, 2)) == 16
        and SUPPORT["Conv2D"].kernel.units((3, 3, 8, 2)) == 2
    )
    assert (SUPPORT["Dense"].kernel.units_key, SUPPORT["Conv1D"].kernel.units_key) == ("units", "filters")
    assert {n for n, s in SUPPORT.items() if s.prunable} == {n for n, s in SUPPORT.items() if s.kernel is not None}


def test_compact_removes_units_of_dense_and_plain_convolutions_only():
    """compactable is what sparsity.dead_neurons reads: Dense and Conv1D / Conv2D, not depthwise or separable."""
    compactable = {n for n, s in SUPPORT.items() if s.compactable}
    assert compactable == {"Dense", "Conv1D", "Conv2D", "Convolution1D", "Convolution2D"}


def test_aliases_are_listed_once_and_the_mc_graph_emits_them():
    from deploykit.core.layers import ALIASES
    from deploykit.uncertainty.mc_layers import EMITTERS

    for alias, name in ALIASES.items():
        assert SUPPORT[alias] is SUPPORT[name]
        assert (alias in EMITTERS) == (name in EMITTERS) and EMITTERS.get(alias) is EMITTERS.get(name), alias


def test_the_batchnorm_formula_is_one_function_for_the_fold_and_the_mc_graph():
    import numpy as np

    from deploykit.core.graph import LayerSpec
    from deploykit.fold.affine import batchnorm_affine, batchnorm_scale_offset

    gamma, beta, mean, var = (np.array(v, np.float32) for v in ([2.0, 0.5], [0.1, -1.0], [3.0, -2.0], [4.0, 0.25]))
    spec = LayerSpec("BatchNormalization", {"name": "bn", "epsilon": 1e-3}, [gamma, beta, mean, var])
    scale, offset = batchnorm_scale_offset(spec)
    x = np.array([[1.0, 2.0]])
    keras_like = gamma * (x - mean) / np.sqrt(var + np.float32(1e-3)) + beta
    np.testing.assert_allclose(x * scale + offset, keras_like, rtol=1e-6)
    affine = batchnorm_affine(spec, (2,))
    np.testing.assert_allclose(np.asarray(affine.scale).reshape(-1), scale)
