"""Token ids checked against the Embedding that reads them (deploykit.data.tokens): one DataError, not a native one."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.data.tokens import check_token_ids
from deploykit.errors import DataError
from deploykit.io.inputs import as_dataset
from tests.core.models import embedding


def _data(x):
    y = np.arange(len(x)) % 3
    return as_dataset((x, y))


def test_ids_within_the_vocabulary_pass():
    x = np.random.default_rng(0).integers(0, 20, (90, 6)).astype(np.float32)
    check_token_ids(_data(x), embedding())


@pytest.mark.parametrize("bad, shown", [(20, "20"), (-1, "-1"), (2.5, "2.5")])
def test_ids_past_the_vocabulary_negative_or_fractional_are_refused(bad, shown):
    x = np.random.default_rng(0).integers(0, 20, (90, 6)).astype(np.float32)
    x[::3, 0] = bad  # in every split
    with pytest.raises(DataError) as caught:
        check_token_ids(_data(x), embedding())
    message = str(caught.value)
    assert "Embedding or CategoryEncoding of 20 tokens (whole numbers from 0 to 19)" in message
    assert f"(e.g. {shown})" in message


def test_a_model_without_an_embedding_reads_features():
    from deploykit.backend import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    check_token_ids(_data(np.random.default_rng(0).standard_normal((90, 6)).astype(np.float32)), model)
