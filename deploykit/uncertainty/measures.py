"""The uncertainty measures that selective prediction and OOD detection rank by: higher means less sure.

- ``MAX_PROB``: 1 - the largest probability (least confidence; the baseline of
  Hendrycks & Gimpel, 2017), for any model;
- ``ENTROPY``: the entropy of the (mean) probabilities in nats, for any model
  (the MC / ensemble ``predictive_entropy`` output);
- ``MUTUAL_INFORMATION``: the MC / ensemble ``mutual_information`` output (the
  samples' disagreement: epistemic uncertainty), MC and ensemble models only.

Every measure is >= 0, so "abstain when measure > threshold" is one rule for all.
"""

from __future__ import annotations

import numpy as np

from deploykit.core.contract import Measure
from deploykit.errors import DataError


def entropy(probs) -> np.ndarray:
    """Entropy over the last axis in nats (0 log 0 = 0), float64."""
    p = np.asarray(probs, np.float64)
    return -(p * np.log(np.maximum(p, np.finfo(np.float64).tiny))).sum(axis=-1)


def uncertainties(probs, mutual_information=None) -> dict[Measure, np.ndarray]:
    """Every measure available for probabilities [N, C] (the MC mean) and an optional MI [N]."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise DataError(f"probabilities must have shape [N, C], got {list(p.shape)}")
    out = {Measure.MAX_PROB: 1.0 - p.max(axis=1), Measure.ENTROPY: entropy(p)}
    if mutual_information is not None:
        mi = np.asarray(mutual_information, np.float64)
        if mi.shape != (len(p),):
            raise DataError(f"mutual information must have shape [{len(p)}], got {list(mi.shape)}")
        out[Measure.MUTUAL_INFORMATION] = mi
    return out
