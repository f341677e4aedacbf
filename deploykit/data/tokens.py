"""Token ids a text model reads: whole numbers below its Embedding's vocabulary, checked before a step feeds them.

An Embedding looks its inputs up as rows of its table: an id at or past ``input_dim`` (or negative) stops
TensorFlow's gather with a native error deep inside a step, and a fractional one is silently truncated. Data that
holds either was made for another vocabulary (or is not token ids at all), so it is one DataError naming it.
"""

from __future__ import annotations

import numpy as np

from deploykit.errors import DataError, UnsupportedLayerError


def check_token_ids(data, model, what: str = "") -> None:
    """Raise a DataError when ``model`` reads ids through a layer of ``core.graph.ID_READERS`` (an Embedding, a
    CategoryEncoding) and ``data`` holds any that is not a whole number from 0 to the vocabulary's size - 1 (models
    without one: nothing to check). A packed model's categorical input is checked in its own columns only."""
    for columns, vocabulary in id_columns_of(model):
        for part, x in (("train", data.x_train), ("validation", data.x_val), ("test", data.x_test)):
            ids = x[:, columns]
            bad = ids[(ids != np.floor(ids)) | (ids < 0) | (ids >= vocabulary)]
            if bad.size:
                raise DataError(
                    f"data {data.name!r}: {what or f'model {model.name!r}'} reads its inputs as the ids of an "
                    f"Embedding or CategoryEncoding of {vocabulary} tokens (whole numbers from 0 to {vocabulary - 1}), "
                    f"but the {part} inputs hold {bad.size} values that are not (e.g. {bad.flat[0]:g})"
                )


def id_columns_of(model) -> list[tuple[slice, int]]:
    """Where ``model``'s input holds token ids, with their vocabularies (:func:`deploykit.core.graph.id_columns`);
    none for a model the graph reader cannot take (its inputs are read as features)."""
    from deploykit.core.graph import graph_from_model, id_columns

    try:
        return id_columns(graph_from_model(model, unsafe=True))
    except UnsupportedLayerError:
        return []
