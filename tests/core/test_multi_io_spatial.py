"""One output that is not one vector per row (an autoencoder's image, [N, 8, 8, 1]): packed into its K columns.

Every step reads a [N, K] regressor: the model is packed as several outputs are (deploykit.core.multi_io_model),
the data's targets [N, 8, 8, 1] are read as [N, 64] by the same layout, and the artifacts give the image back.
The model is keras.io's denoising autoencoder (Conv2D, MaxPooling2D, Conv2DTranspose), Keras 3, trained two
epochs on 8x8 digits. Export, validate and optimize end to end are in tests/pipeline/test_optimize_spatial.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.multi_io import Layout, artifact_layout
from deploykit.core.task import OutputKind, Task
from deploykit.errors import DataError
from tests.multi_models import denoising_autoencoder, denoising_npz, noisy_digits


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> tuple:
    """(Keras 3 autoencoder, its .keras file, its .npz): trained and written once for this file's tests."""
    model = denoising_autoencoder(epochs=2)
    folder = tmp_path_factory.mktemp("autoencoder")
    model.save(folder / "ae.keras")
    denoising_npz(folder / "ae.npz")
    return model, folder / "ae.keras", folder / "ae.npz"


def test_one_image_output_is_packed_columns_and_a_vector_output_is_not():
    image = Layout.of({"input": (8, 8, 1)}, {"conv2d": (8, 8, 1)})
    assert image.packs_outputs and not image.several_outputs and image.output_size == 64
    assert image.packed_input_shape == (8, 8, 1)  # one input keeps its own shape
    assert not Layout.of({"input": (4,)}, {"dense": (3,)}).packs_outputs
    assert Layout.of({"a": (2,), "b": (3,)}, {"dense": (1,)}).packed_input_shape == (5,)


def test_an_artifact_with_one_image_output_is_read_as_its_columns():
    layout = artifact_layout({"input": (8, 8, 1)}, {"conv2d_2": (8, 8, 1)})
    assert layout.output_names() == ["conv2d_2"] and layout.output_size == 64
    y = np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8, 1)
    np.testing.assert_array_equal(layout.join_outputs({"conv2d_2": y}), y.reshape(2, 64))
    assert artifact_layout({"input": (4,)}, {"prediction": (3,)}) is None  # the contract's outputs as they are
    assert artifact_layout({"input": (4,)}, {"dense": (5,)}) is None  # a vector per row
    assert artifact_layout({"input": (None, 4)}, {"lstm": (None, 3)}) is None  # a foreign file's variable length


def test_the_keras3_autoencoder_loads_packed_exactly_and_unpacks_to_its_image(autoencoder):
    from deploykit.core.multi_io_model import layout_of, unpack_model
    from deploykit.io.models import load_model

    model, path, _ = autoencoder
    packed = load_model(path)
    assert packed.input_shape == (None, 8, 8, 1) and packed.output_shape == (None, 64)
    layout = layout_of(packed)
    assert [t.shape for t in layout.outputs] == [(8, 8, 1)] and layout.inputs[0].shape == (8, 8, 1)
    noisy, _ = noisy_digits()
    want = np.asarray(model(noisy[:32]))
    np.testing.assert_allclose(np.asarray(packed(noisy[:32])), want.reshape(32, 64), atol=1e-5)
    back = unpack_model(packed)
    assert back.output_shape == (None, 8, 8, 1)
    np.testing.assert_allclose(np.asarray(back(noisy[:32])), want, atol=1e-5)


def test_image_targets_are_read_as_columns_of_a_regression(autoencoder):
    from deploykit.core.multi_io_model import layout_of
    from deploykit.data.dataset import load_dataset
    from deploykit.io.models import load_model

    _, path, npz = autoencoder
    model = load_model(path)
    data = load_dataset(npz, layout=layout_of(model))
    assert data.task is Task.REGRESSION and data.num_outputs == 64
    assert data.input_shape == (8, 8, 1) and data.y_train.shape[1:] == (64,)
    assert data.check_model(model) == (Task.REGRESSION, OutputKind.VALUES)  # a sigmoid image: per-pixel values
    noisy, clean = noisy_digits()
    rows = [int(np.argmin(np.abs(noisy - x).sum(axis=(1, 2, 3)))) for x in data.x_test]  # split at random
    np.testing.assert_array_equal(data.x_test, noisy[rows])
    np.testing.assert_array_equal(data.y_test, clean[rows].reshape(len(rows), 64))  # each row's image, flattened


def test_image_targets_may_come_in_given_splits(tmp_path, autoencoder):
    from deploykit.core.multi_io_model import layout_of
    from deploykit.data.dataset import load_dataset
    from deploykit.io.models import load_model

    noisy, clean = noisy_digits()
    np.savez(tmp_path / "split.npz", x_train=noisy[:300], y_train=clean[:300], x_test=noisy[300:], y_test=clean[300:])
    data = load_dataset(tmp_path / "split.npz", layout=layout_of(load_model(autoencoder[1])))
    assert data.x_test.shape == (100, 8, 8, 1) and data.y_test.shape == (100, 64)
    np.testing.assert_array_equal(data.y_test, clean[300:].reshape(100, 64))


def test_image_targets_of_another_size_are_one_error_naming_the_output(tmp_path, autoencoder):
    from deploykit.core.multi_io_model import layout_of
    from deploykit.data.dataset import load_dataset
    from deploykit.io.models import load_model

    layout = layout_of(load_model(autoencoder[1]))
    name = layout.outputs[0].name
    np.savez(tmp_path / "bad.npz", x=np.zeros((40, 8, 8, 1)), y=np.zeros((40, 4, 4, 1)))
    with pytest.raises(DataError, match=rf"16 target column\(s\) per row, but the model output '{name}' has 64"):
        load_dataset(tmp_path / "bad.npz", layout=layout)


def test_classification_of_an_image_out_is_refused_in_one_line(autoencoder):
    from deploykit.core.multi_io_model import layout_of
    from deploykit.data.dataset import load_dataset
    from deploykit.io.models import load_model

    layout = layout_of(load_model(autoencoder[1]))
    with pytest.raises(DataError, match=r"\[8, 8, 1\] is shipped as a regression of its values; --task classification"):
        load_dataset(autoencoder[2], layout=layout, task="classification")


def test_a_per_timestep_sequence_output_is_packed_and_unpacked_exactly():
    from deploykit.backend import keras
    from deploykit.core.multi_io_model import unpack_model
    from deploykit.io.models import check_single_io

    x = keras.Input((10, 3))
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.LSTM(4, return_sequences=True)(x)))
    packed = check_single_io(model)
    assert packed.output_shape == (None, 20)
    rows = np.random.default_rng(0).normal(size=(5, 10, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(packed(rows)), np.asarray(model(rows)).reshape(5, 20))
    assert unpack_model(packed).output_shape == (None, 10, 2)


def _segmenter():
    """A per-pixel softmax (3 classes per position), tf_keras: a classifier of every pixel."""
    from deploykit.backend import keras

    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    return keras.Model(x, keras.layers.Conv2D(3, 1, activation="softmax")(h))


def test_a_per_pixel_softmax_is_packed_as_its_probabilities_and_a_mask_of_ids_read_as_one_hot(tmp_path):
    """A segmentation head (a softmax over 3 classes per pixel) is packed into its 8 x 8 x 3 probabilities (it was
    refused against data), exactly; a mask of class ids [N, 8, 8], as sparse_categorical_crossentropy takes it, is
    read as their one-hot targets."""
    from deploykit.core.multi_io_model import packing_of
    from deploykit.data.dataset import load_dataset
    from deploykit.io.models import check_single_io

    model = _segmenter()
    packed = check_single_io(model)
    rng = np.random.default_rng(0)
    x, mask = rng.normal(size=(30, 8, 8, 1)).astype("float32"), rng.integers(0, 3, (30, 8, 8))
    np.testing.assert_array_equal(np.asarray(packed(x)), np.asarray(model(x)).reshape(30, -1))
    np.savez(tmp_path / "seg.npz", x=x, y=mask)
    data = load_dataset(tmp_path / "seg.npz", layout=packing_of(packed).layout)
    assert data.check_model(packed)[0].value == "regression" and data.num_outputs == 8 * 8 * 3
    rows = np.concatenate([data.y_train, data.y_val, data.y_test]).reshape(30, 8, 8, 3)
    assert (rows.sum(-1) == 1).all() and sorted(map(tuple, rows.argmax(-1).reshape(30, -1))) == sorted(
        map(tuple, mask.reshape(30, -1))
    )


def test_a_batchnorm_after_conv2d_transpose_folds_into_it_exactly():
    from deploykit.core.layers import support_for
    from deploykit.fold import fold_batchnorm
    from deploykit.io.inputs import as_model
    from tests.helpers import randomize_batchnorm

    packed = as_model(denoising_autoencoder(epochs=1, batchnorm=True))  # imported from Keras 3, packed
    randomize_batchnorm(packed, 0)
    folded, report = fold_batchnorm(packed)
    kinds = [type(layer).__name__ for layer in folded.layers]
    assert "BatchNormalization" not in kinds and kinds.count("Conv2DTranspose") == 2
    assert {f.target for f in report.folded} == {
        layer.name for layer in packed.layers if type(layer).__name__ == "Conv2DTranspose"
    }
    noisy, _ = noisy_digits()
    np.testing.assert_allclose(np.asarray(folded(noisy[:64])), np.asarray(packed(noisy[:64])), atol=1e-5)
    assert support_for(packed.get_layer(report.folded[0].target), unsafe=True).prunable  # TF-MOT prunes it
