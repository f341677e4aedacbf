"""Training with the chapter's recommended configuration (Hands-On ML ch. 11, Tables 11-3 and 11-4).

``TrainConfig`` (presets ``default`` and ``selu``), ``build_model``,
``find_lr`` (the learning-rate finder) and ``train`` (1cycle, early stopping,
atomic outputs). Names are imported lazily: ``deploykit.training.presets`` stays
free of TensorFlow, so the CLI and config readers can use it cheaply. The
top-level ``deploykit.train``, ``deploykit.find_lr`` and ``deploykit.build_model``
are these functions, re-exported lazily by ``deploykit/__init__.py``.
"""

from __future__ import annotations

from deploykit._lazy import lazy_exports

_API = {
    "TrainConfig": "deploykit.training.presets",
    "build_model": "deploykit.training.model",
    "find_lr": "deploykit.training.lr_finder",
    "train": "deploykit.training.trainer",
}

__all__ = list(_API)


__getattr__, __dir__ = lazy_exports("deploykit.training", _API, globals())
