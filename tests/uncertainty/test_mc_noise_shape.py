"""Drop-connect Dropout (a ``noise_shape``, as EfficientNet's blocks carry) in the MC Dropout graph.

Keras draws one keep value per position of the noise shape and broadcasts it along its 1-dims: with
``(None, 1, 1, 1)`` a sample keeps or drops the whole tensor. The MC graph must do the same with both
mask kinds, not refuse the layer.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.graph import graph_from_model
from deploykit.errors import UnsupportedLayerError
from deploykit.uncertainty.masks import MaskKind
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
from tests.uncertainty.support import run, session

SHAPE = (3, 3, 2)


def _model(noise_shape):
    """Input -> dropout(noise_shape) -> Flatten -> identity Dense (a regressor reading every masked value)."""
    from deploykit.backend import keras

    inputs = keras.Input(SHAPE)
    layer = keras.layers.Dropout(0.5, noise_shape=noise_shape, name="drop")
    x = keras.layers.Flatten()(layer(inputs))
    width = int(np.prod(SHAPE))
    out = keras.layers.Dense(width, use_bias=False, kernel_initializer="identity", name="out")(x)
    return keras.Model(inputs, out)


def _samples(model, mask, samples=400):
    config = MCConfig(samples=samples, max_samples=samples, include_samples=True, mask=mask, task="regression")
    x = np.random.default_rng(0).uniform(1.0, 2.0, (2, *SHAPE)).astype(np.float32)
    out = run(session(build_mc_graph(graph_from_model(model), config)), x)
    return out["sample_predictions"].reshape(samples, 2, *SHAPE), x


@pytest.mark.parametrize("mask", [MaskKind.POOL, MaskKind.DROPOUT])
def test_per_sample_noise_shape_keeps_or_drops_the_whole_tensor(mask):
    got, x = _samples(_model((None, 1, 1, 1)), mask)
    kept = np.isclose(got, 2 * x[None], rtol=1e-5)  # kept values are scaled by 1 / (1 - rate)
    dropped = got == 0
    assert np.all(kept | dropped)
    whole = kept.reshape(*got.shape[:2], -1)
    assert np.all(whole.all(axis=-1) | (~whole).all(axis=-1))  # one draw per sample: all kept or all dropped
    rate = dropped.reshape(*got.shape[:2], -1)[..., 0].mean()
    assert 0.4 < rate < 0.6


@pytest.mark.parametrize("mask", [MaskKind.POOL, MaskKind.DROPOUT])
def test_per_channel_noise_shape_is_broadcast_over_positions(mask):
    got, x = _samples(_model((None, 1, 1, 2)), mask)
    kept = np.isclose(got, 2 * x[None], rtol=1e-5)
    assert np.all(kept | (got == 0))
    per_channel = kept.reshape(*got.shape[:2], -1, 2)  # [T, N, positions, channels]
    assert np.all(per_channel.all(axis=2) | (~per_channel).all(axis=2))
    assert 0 < per_channel[:, :, 0, 0].mean() < 1 and (per_channel[..., 0, 0] != per_channel[..., 0, 1]).any()


def test_a_noise_shape_shared_across_the_batch_is_refused():
    with pytest.raises(UnsupportedLayerError, match="same mask"):
        build_mc_graph(graph_from_model(_model((1, 1, 1, 1))), MCConfig(task="regression"))
