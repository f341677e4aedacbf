"""A conversion of a model, reused by the next export of the same, unchanged model in this process.

``optimize`` and ``export_bundle`` export one model in several variants, each through its own ``export_onnx`` /
``export_tflite`` call: float32, float16, int8-dynamic ONNX all start from the same tf2onnx conversion, and the
TFLite variants from the same traced function and SavedModel. Converting once per (model, what is converted)
saves that work for every further variant: tens of seconds per variant on EfficientNetB0.

When an entry may be reused: only for the **same model object** (held by a weak reference, so a collected model's
entry never matches a new object at the same address) whose **fingerprint is unchanged**: a hash of every variable's
value, shape, dtype and name, and of the model's config (layer classes, activations, ``unroll``...). A model whose
weights were set after its first export (a fine-tune, ``set_weights``, a fold in place) is converted again. What the
fingerprint cannot see is Python state outside the config and the variables (a layer's ``call`` patched by hand);
deploykit changes neither between the exports of one run.

Why a process-wide cache and not one scoped to a call: each variant is its own public call (``export_variant``, the
pipeline's steps), so no one call sees them all. The cache never crosses a process: exports run in this process only
(the child of :mod:`deploykit.export.isolated` loads and runs finished files), and a fresh process starts empty.
Entries are few (:data:`ENTRIES`): the most recently used ones are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

#: Entries kept per cache (the last used): a run's original, folded and int8-prepared models.
ENTRIES = 3


def fingerprint(model) -> str:
    """A hash of ``model``'s variables (name, shape, dtype, value) and config: equal while neither changed.

    Every byte of every weight is read (~0.05 s for EfficientNetB0's 5 M parameters, against seconds per conversion),
    so no change, however small, goes unseen."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(_config_text(model).encode())
    for variable in getattr(model, "variables", ()):
        value = variable.numpy()
        digest.update(f"{variable.name}|{value.dtype}|{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _config_text(model) -> str:
    """The model's config as text; a model without one (subclassed) is described by its layers' classes and names."""
    try:
        return json.dumps(model.get_config(), sort_keys=True, default=repr)
    except Exception:  # noqa: BLE001  (subclassed models raise NotImplementedError or anything of their own)
        layers = getattr(model, "layers", ())
        return type(model).__qualname__ + "|" + ",".join(f"{type(x).__qualname__}:{x.name}" for x in layers)


class _Entry:
    __slots__ = ("fingerprint", "model", "value")

    def __init__(self, model, print_: str, value) -> None:
        self.model = weakref.ref(model)
        self.fingerprint = print_
        self.value = value


class ModelCache:
    """Values made from a model, by (model, key), valid while the model's :func:`fingerprint` is unchanged.

    ``copy`` gives each caller its own copy of a stored value (an ONNX proto the caller edits); ``drop`` releases
    an evicted value (a SavedModel folder on disk).
    """

    def __init__(self, copy: Callable[[Any], Any] = lambda v: v, drop: Callable[[Any], None] = lambda v: None) -> None:
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._copy, self._drop = copy, drop
        self.hits = self.misses = 0

    def get(self, model, key: Hashable, make: Callable[[], Any]):
        """``make()`` for ``model`` and ``key``, or a copy of what it returned for them before the model last
        changed. ``make`` runs without the lock held only when nothing valid is stored (misses are not shared)."""
        print_ = fingerprint(model)
        slot = (os.getpid(), id(model), key)  # a forked child never reads its parent's entries
        with self._lock:
            entry = self._entries.get(slot)
            if entry is not None and entry.model() is model and entry.fingerprint == print_:
                self._entries.move_to_end(slot)
                self.hits += 1
                return self._copy(entry.value)
            self.misses += 1
        value = make()
        self._store(slot, _Entry(model, print_, self._copy(value)))
        return value

    def _store(self, slot: tuple, entry: _Entry) -> None:
        with self._lock:
            old = self._entries.pop(slot, None)
            if old is not None:
                self._drop(old.value)
            self._entries[slot] = entry
            while len(self._entries) > ENTRIES:
                self._drop(self._entries.popitem(last=False)[1].value)

    def clear(self) -> None:
        """Forget every entry (their values dropped)."""
        with self._lock:
            for entry in self._entries.values():
                self._drop(entry.value)
            self._entries.clear()
