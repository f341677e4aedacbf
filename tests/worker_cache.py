"""One result for every pytest-xdist worker of a run: the first worker to ask computes it, the others load it.

A session fixture runs once per worker, so under ``pytest -n 2`` a trained fixture is trained twice. For a fixture
the tests only read, :func:`once_per_run` computes it once under a file lock in the run's temporary root (shared by
the run's workers, fresh for every run: no result outlives the code that made it) and saves it there; the other
workers load the saved file. The key names the exact arguments of the computation. Without xdist (or without
``fcntl``), it is computed in the process, as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def run_root(tmp_path_factory) -> Path:
    """The temporary folder every worker of this run shares (a worker's own base folder sits inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_per_run(
    tmp_path_factory,
    key: str,
    compute: Callable[[], T],
    save: Callable[[T, Path], None],
    load: Callable[[Path], T],
    suffix: str = "",
) -> T:
    """``compute()`` in the first worker that asks (saved as ``<key><suffix>``), ``load(path)`` in the others."""
    try:
        import fcntl
    except ImportError:  # no POSIX file locks: every worker computes its own, as without this cache
        return compute()
    root = run_root(tmp_path_factory) / "worker-cache"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{key}{suffix}"
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait while the first computes and saves
        try:
            if path.exists():
                return load(path)
            value = compute()
            save(value, path)
            return value
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
