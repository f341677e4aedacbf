"""Atomic writes: build aside, then rename, so an interrupted run leaves nothing half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from deploykit.errors import UsageError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffix (Keras and friends choose the
    format from it). On error the temporary file or folder is removed and
    ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sfx = final.suffix if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{sfx}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers create it themselves (some refuse an existing file)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if final.is_dir() and not tmp.is_dir():
            raise UsageError(f"{final} is a folder; cannot replace it with a file")
        _swap_in(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a fresh folder beside ``path``; move it into place on success.

    An existing ``path`` is refused unless ``force``; a file at ``path`` is
    always refused. On error the staging folder is removed and an existing
    ``path`` is untouched.
    """
    final = check_dir_target(path, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}.tmp"
    staging.mkdir()  # unlike mkdtemp's 0700, honours the umask: serving engines may run as another user
    try:
        yield staging
        _swap_in(staging, final)
    except BaseException:
        _remove(staging)
        raise


def check_dir_target(path: str | os.PathLike, force: bool = False) -> Path:
    """Raise what :func:`atomic_dir` would refuse (a file, or a non-empty folder without ``force``); writes nothing."""
    final = Path(path)
    if final.exists() and not final.is_dir():
        raise UsageError(f"output path {final} is a file, not a folder")
    if final.exists() and any(final.iterdir()) and not force:
        raise UsageError(f"output folder {final} already exists and is not empty; pass --force to replace it")
    return final


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _swap_in(new: Path, final: Path) -> None:
    """Rename ``new`` onto ``final``. A folder in the way is moved aside first and put back on failure."""
    if not (new.is_dir() and final.exists()):
        os.replace(new, final)  # atomic for files; a missing final needs no care
        return
    aside = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(final, aside)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(aside, final)
        raise
    _remove(aside)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
