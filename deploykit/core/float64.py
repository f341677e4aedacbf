"""A tf_keras model's float64 twin: the same layers and weights computing in float64.

An exact rewrite (removing dead channels, folding) changes a float32 model's outputs only by rounding, and a
fixed bound on that rounding is below some models' own float32 floor: a randomly initialised MobileNetV2 is
1.75e-5 from a float64 evaluation of itself before anything is rewritten, and a compaction that agrees to 7e-15 in
float64 moves its float32 outputs by 2.1e-5. Comparing the two models' float64 twins tells an exact rewrite
(agreement to ~1e-12) from a wrong one (a difference of the rewrite's own size) whatever the float32 floor.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _wider(config: Any) -> Any:
    """``config`` with every ``"float32"`` dtype (a string or a policy's name) read as ``"float64"``."""
    if isinstance(config, dict):
        return {k: _wider(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_wider(v) for v in config]
    return "float64" if config == "float32" else config


def float64_twin(model):
    """A copy of the tf_keras ``model`` whose layers compute in float64, with its weights cast to float64.

    Inputs are cast by each layer's autocast. Raises whatever the layers raise when one cannot be rebuilt in float64
    (a custom layer with fixed float32 state, say): the caller then has no float64 evidence."""
    from deploykit.backend import keras

    def clone(layer):
        return layer.__class__.from_config(_wider(layer.get_config()))

    twin = keras.models.clone_model(model, clone_function=clone)
    weights = model.get_weights()
    twin.set_weights([w.astype(np.float64) if w.dtype == np.float32 else w for w in weights])
    return twin


def float64_outputs(model, x) -> np.ndarray:
    """``model``'s inference outputs computed by its float64 twin."""
    from deploykit.core.evaluate import outputs

    wide = x.astype(np.float64) if np.asarray(x).dtype == np.float32 else x
    return np.asarray(outputs(float64_twin(model), wide), np.float64)
