"""Conv2DTranspose in the MC Dropout graph: an ONNX ConvTranspose cropped as Keras crops, for every padding.

A decoder with a Dropout before its Conv2DTranspose and an image out ([N, H, W, 1], packed into its columns by
deploykit.core.multi_io_model): at rate 0 the MC graph's mean is the Keras output, flattened.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.graph import graph_from_model
from deploykit.errors import UnsupportedLayerError
from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph
from tests.uncertainty.support import run, session, zero_graph_dropout


def _decoder(padding: str, kernel: int, strides: int, **kw):
    from deploykit.backend import keras, set_seed

    set_seed(0)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((5, 4, 1)),
            L.Conv2D(3, 3, padding="same", activation="relu"),
            L.Dropout(0.3),
            L.Conv2DTranspose(4, kernel, strides=strides, padding=padding, activation="relu", **kw),
            L.Conv2D(1, 1, activation="sigmoid"),
        ]
    )


def _without_dropout(model):
    """The packed model's graph with every dropout rate 0 (the deterministic network)."""
    from deploykit.io.models import check_single_io

    return zero_graph_dropout(graph_from_model(check_single_io(model)))


@pytest.mark.parametrize(
    ("padding", "kernel", "strides"), [("same", 3, 2), ("valid", 3, 2), ("same", 1, 2), ("same", 4, 2), ("valid", 2, 3)]
)
def test_rate_zero_equals_the_keras_decoder(padding, kernel, strides):
    model = _decoder(padding, kernel, strides)
    x = np.random.default_rng(0).normal(size=(7, 5, 4, 1)).astype("float32")
    out = run(session(build_mc_graph(_without_dropout(model), MCConfig(samples=3))), x)
    want = np.asarray(model(x)).reshape(7, -1)
    assert out["mean"].shape == want.shape
    np.testing.assert_allclose(out["mean"], want, atol=1e-5)
    assert out["std"].max() <= 1e-5


def test_output_padding_is_named_not_guessed():
    model = _decoder("same", 3, 2, output_padding=1)
    with pytest.raises(UnsupportedLayerError, match="output_padding is not supported in the MC Dropout graph"):
        build_mc_graph(_without_dropout(model), MCConfig(samples=3))
