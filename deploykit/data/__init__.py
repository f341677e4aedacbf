"""Datasets: ``dataset`` (the loaders and :class:`Dataset`), ``readers`` (IDX, CSV and .npz files read with their
sizes checked), ``labels`` (labels checked and encoded, the task read off them) and ``onehot`` (one-hot rows and
0/1 label matrices told apart). Layer 2: it imports only ``deploykit.core`` and the top-level utility modules.

The loader's public names are re-exported lazily (``from deploykit.data import load_dataset``).
"""

from __future__ import annotations

from deploykit._lazy import lazy_exports

_API = {name: "deploykit.data.dataset" for name in ("Dataset", "SplitConfig", "load_dataset")}

__all__ = [*_API]

__getattr__, __dir__ = lazy_exports("deploykit.data", _API, globals())
